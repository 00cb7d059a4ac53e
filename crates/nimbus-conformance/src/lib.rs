//! The conformance suite every nimbus engine must pass, written once (quickwit's
//! `storage_test_suite` pattern): an engine's tests call [`conformance_suite!`] with an async
//! function that builds a fresh [`Harness`], and get one test per case. Compute providers have
//! theirs in [`compute`].

pub mod cases;
pub mod compute;

use std::any::Any;
use std::collections::BTreeMap;
use std::time::Duration;

use nimbus_core::{Engine, QueueName, QueueOptions, Result, TopicName};

/// An engine under test and the time unit it honours.
pub struct Harness {
    /// The engine.
    pub engine: Engine,
    /// The shortest visibility timeout or delay the engine honours (SQS counts whole seconds);
    /// cases express their timings in ticks.
    pub tick: Duration,
    /// Prefixed to every name a case creates, so cases can share one engine.
    pub prefix: String,
    /// Kept alive for the case (a temporary directory, a server).
    pub guard: Option<Box<dyn Any + Send + Sync>>,
    /// Cases this engine is known to fail, or may fail in one known way (see
    /// [`Harness::known_gap`] and [`Harness::known_race`]).
    pub gaps: BTreeMap<&'static str, Gap>,
    /// How many times longer a slow engine's windows are (see [`Harness::window`]).
    pub patience: u32,
}

impl Harness {
    /// A harness over `engine`, with names made unique for this case.
    pub fn new(engine: Engine, tick: Duration) -> Self {
        let prefix = format!("t{:08x}", rand_u32());
        Self {
            engine,
            tick,
            prefix,
            guard: None,
            gaps: BTreeMap::new(),
            patience: 1,
        }
    }

    /// Declares that this engine fails `case`, and why (a behaviour the service behind it does
    /// not have). The case still runs, and must fail: if it passes, the test fails and says the
    /// gap is gone. Every engine lists its gaps in one place, beside its harness.
    pub fn known_gap(mut self, case: &'static str, reason: &'static str) -> Self {
        self.gaps.insert(
            case,
            Gap {
                reason,
                symptom: None,
            },
        );
        self
    }

    /// Declares that `case` may fail on this engine in one known way only: with a panic whose
    /// message contains `symptom` (a race in the server behind the engine). Such a failure is
    /// printed with the reason; any other failure fails the test.
    pub fn known_race(
        mut self,
        case: &'static str,
        symptom: &'static str,
        reason: &'static str,
    ) -> Self {
        self.gaps.insert(
            case,
            Gap {
                reason,
                symptom: Some(symptom),
            },
        );
        self
    }

    /// Makes the windows `factor` times longer for a slow engine (see [`Harness::window`]).
    pub fn patience(mut self, factor: u32) -> Self {
        self.patience = factor.max(1);
        self
    }

    /// Keeps `guard` alive as long as the harness.
    pub fn guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// `n` ticks.
    pub fn ticks(&self, n: u32) -> Duration {
        self.tick * n
    }

    /// How long a case keeps a message hidden (in flight or delayed) while it checks, with
    /// calls to the server, that nothing else comes out: three ticks times the patience. The
    /// cases wait for results, not for fixed times, so only these windows depend on the
    /// server's speed, and a check that ends after its window has passed fails saying so
    /// (a server that slow needs more patience) rather than judging the engine.
    pub fn window(&self) -> Duration {
        self.ticks(3) * self.patience
    }

    /// This case's name for a queue called `stem` (`.fifo` stays a suffix).
    pub fn queue_name(&self, stem: &str) -> QueueName {
        QueueName::new(format!("{}-{stem}", self.prefix)).expect("valid test queue name")
    }

    /// Creates this case's queue `stem` with `options`.
    pub async fn queue(&self, stem: &str, options: QueueOptions) -> Result<QueueName> {
        let name = self.queue_name(stem);
        self.engine.queue.create_queue(&name, &options).await?;
        Ok(name)
    }

    /// Creates this case's topic `stem`.
    pub async fn topic(&self, stem: &str) -> Result<TopicName> {
        let name =
            TopicName::new(format!("{}-{stem}", self.prefix)).expect("valid test topic name");
        self.engine.topic.create_topic(&name).await?;
        Ok(name)
    }
}

/// A declared difference between an engine and the suite.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// Why the engine differs.
    pub reason: &'static str,
    /// `None`: the case always fails. `Some(s)`: it may fail, only with a message containing `s`.
    pub symptom: Option<&'static str>,
}

/// Judges a case run under a declared gap: an always-failing gap must have failed; a race may
/// have failed only with its symptom. Prints the reason where the case failed.
pub fn expect_gap(case: &str, gap: Gap, outcome: Result<(), tokio::task::JoinError>) {
    let message = match outcome {
        Ok(()) => {
            assert!(
                gap.symptom.is_some(),
                "case `{case}` passes on this engine now: remove it from the engine's known gaps ({})",
                gap.reason
            );
            return;
        }
        Err(e) => match e.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default(),
            Err(e) => e.to_string(),
        },
    };
    if let Some(symptom) = gap.symptom {
        assert!(
            message.contains(symptom),
            "case `{case}` failed otherwise than its known race (`{symptom}`): {message}"
        );
    }
    eprintln!(
        "known gap: case `{case}` failed on this engine, as declared: {}",
        gap.reason
    );
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Expands to one `#[tokio::test]` per conformance case; `$make` is an async expression that
/// evaluates to a fresh [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            visibility_expiry_redelivers_with_rising_receive_count,
            extend_keeps_hidden_and_release_makes_visible,
            stale_receipt_neither_deletes_nor_extends,
            dead_letters_after_max_receives,
            fifo_orders_within_a_group_and_holds_a_group_in_flight,
            fifo_deduplicates_within_the_window,
            delay_hides_a_message_until_due,
            batch_limits_and_bad_input_are_refused,
            depth_counts_visible_in_flight_and_delayed,
            long_poll_wakes_on_send_and_times_out_when_empty,
            concurrent_consumers_never_share_a_delivery,
            queue_lifecycle_is_idempotent_and_conflicts_are_reported,
            fan_out_reaches_every_subscribed_queue_through_filters,
            put_if_absent_raced_by_8_tasks_has_one_winner,
            counter_adds_from_8_tasks_sum_right,
            ledger_items_have_versions_and_conditions,
            put_batch_checks_each_condition_on_its_own,
            ledger_pages_a_partition_both_ways_from_a_cursor,
            fifo_group_is_held_by_any_message_in_flight,
            a_zero_visibility_receive_hands_out_each_message_once,
            blobs_put_get_list_delete,
            every_core_rule_is_refused_alike_and_a_refused_batch_writes_nothing,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = std::sync::Arc::new($make.await);
                let name = stringify!($case);
                match harness.gaps.get(name).copied() {
                    None => $crate::cases::$case(&harness).await,
                    Some(gap) => {
                        let h = harness.clone();
                        let outcome = tokio::spawn(async move { $crate::cases::$case(&h).await }).await;
                        $crate::expect_gap(name, gap, outcome);
                    }
                }
            }
        )+
    };
}

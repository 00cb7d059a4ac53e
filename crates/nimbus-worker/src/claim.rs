//! Task claims in the ledger: how a worker makes a task's effects happen once although its
//! messages are delivered at least once.
//!
//! One ledger item per task id (`task#<id>` / `claim`) moves through these states:
//!
//! ```text
//!   (absent) --put-if-absent--> Running{owner, lease_until, message_id, tries}
//!   Running  --owner renews every visibility/2 (compare-and-swap on version)--> Running (later lease)
//!   Running  --handler succeeded or failed for good (CAS)--> Ended{report, ended_ms}
//!   Ended, ended_ms past the retention --the one sweeper (CAS delete)--> (absent)
//!   Running  --handler asked to retry (retries + 1), or shutdown released it (CAS)--> Waiting{tries}
//!   Waiting  --the next delivery (CAS)--> Running{tries}
//!   Running with lease_until in the past, still so after a moment --another worker, alone, CAS--> Running{new owner, crashes + 1}  (takeover)
//!   Running with `max_crashes` crashes, in the past --another worker (CAS)--> Ended{failed: a poison task}
//! ```
//!
//! The claim counts a task's tries ([`Tries`]) rather than the queue's receive count, which
//! also counts deliveries that found the task busy elsewhere and deliveries that died beside
//! another task. A takeover (its owner stopped renewing: it died, or stopped past its lease)
//! runs alone on its worker: the worker waits until nothing else runs and receives nothing
//! meanwhile, so a task that kills its worker kills no other task with it, and only its own
//! crash count grows. After `max_crashes` crashes it fails for good with a report that says so,
//! instead of killing workers until the queue dead-letters it with every task that shared its
//! worker (the chaos harness found those dead-lettered beside it).
//!
//! A delivery that finds the claim `Done`/`Failed` is acknowledged without running: if it is
//! the same message that ran (the owner died after recording the end but before deleting the
//! message), the stored report is sent again so no report is lost; a different message with the
//! same task id is a duplicate submission and is only acknowledged. A delivery that finds a live
//! `Running` claim of another worker is hidden again until that lease ends, and looks again then.
//! Every transition is a conditional write, so two workers never both believe they own a task.
//! The one window left is between a handler's external effect and the `Done` write: a worker
//! killed inside it, or stopped inside it past its lease and the takeover's probe (a second look
//! at the claim a moment later, so that an owner that could not write for a while keeps its
//! task), has its task run again (at-least-once), as in every queue-based system without
//! transactional effects. It lasts as long as the completer takes to record the end (it batches
//! ends, a few milliseconds under load); a completer whose writes fail tries them again rather
//! than dropping the ends (`nimbus bench chaos` counts how often the window is hit).

use std::time::Duration;

use bytes::Bytes;
use nimbus_core::{ItemKey, Result, TaskReport};
use serde::{Deserialize, Serialize};

/// How often a task ran before, as its claim counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tries {
    /// Runs whose handler asked to be retried (the backoff doubles with each).
    #[serde(default)]
    pub retries: u32,
    /// Runs cut off by their worker's end: taken over after the owner stopped renewing.
    #[serde(default)]
    pub crashes: u32,
}

/// A claim's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Claim {
    /// A worker runs the task and renews its lease while it does.
    Running {
        /// The worker that owns it.
        owner: String,
        /// Milliseconds since the epoch when the lease ends unless renewed.
        lease_until_ms: i64,
        /// The message whose delivery is running it.
        message_id: String,
        /// Its tries before this run.
        #[serde(default)]
        tries: Tries,
    },
    /// Not running: asked to be retried, or given back at a shutdown; the next delivery
    /// resumes it at once, with these tries.
    Waiting {
        /// Its tries so far.
        tries: Tries,
    },
    /// The task ended; the report says how.
    Ended {
        /// The message that ran it.
        message_id: String,
        /// The report sent on the reply queue.
        report: TaskReport,
        /// Milliseconds since the epoch when the end was recorded (0 in claims from before it
        /// was kept): the sweep deletes the claim only once this is past the retention.
        #[serde(default)]
        ended_ms: i64,
    },
}

impl Claim {
    /// A running claim for `owner`, whose message is leased for `visibility`: the claim's own
    /// lease ends a little earlier ([`claim_lease`]).
    pub fn running(owner: &str, message_id: &str, visibility: Duration, tries: Tries) -> Self {
        let lease = claim_lease(visibility);
        Self::Running {
            owner: owner.to_string(),
            lease_until_ms: now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            message_id: message_id.to_string(),
            tries,
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            nimbus_core::Error::internal("task claim in the ledger is corrupt").with_source(e)
        })
    }
}

/// How long a claim's lease lasts when its message is leased for `visibility`: an eighth less
/// (at least 100 ms less, at most half), renewed with the message every half `visibility`.
/// When its owner dies, the claim has run out by the time the message is visible again, so the
/// next delivery takes the task over at once. Were they to end together, that delivery would
/// find a claim a few milliseconds from its end, hide the message for them and be received once
/// more: two receives per death instead of one, and a dead-letter queue's `max_receives` used
/// up twice as fast by tasks that are not poison (the chaos harness found them dead-lettered).
pub fn claim_lease(visibility: Duration) -> Duration {
    let margin = (visibility / 8)
        .max(Duration::from_millis(100))
        .min(visibility / 2);
    visibility - margin
}

/// The ledger key of a task's claim.
pub fn claim_key(task_id: &str) -> Result<ItemKey> {
    ItemKey::new(format!("{CLAIM_PREFIX}{task_id}"), "claim")
}

const CLAIM_PREFIX: &str = "task#";
/// The longest task id a claim can name.
pub const MAX_TASK_ID_BYTES: usize = nimbus_core::ledger::MAX_KEY_BYTES - CLAIM_PREFIX.len();

/// What a delivery should do given the claim it found (it lost the put-if-absent).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The task ended; acknowledge the message, re-sending the report if this message ran it.
    AlreadyEnded {
        /// The stored report, to send again when `resend` is true.
        report: TaskReport,
        /// This very message ran the task (the owner died before deleting it).
        resend: bool,
    },
    /// Another worker holds a live lease: hide the message this long, then look again.
    HeldElsewhere(Duration),
    /// The owner's lease ran out: take the task over with a compare-and-swap at this version;
    /// its tries before the run that was cut off.
    TakeOver(u64, Tries),
    /// The task waits for its next run: resume it at this version with these tries.
    Resume(u64, Tries),
}

/// Decides what a delivery of `message_id` does about an existing claim at `version`.
pub fn decide(existing: &Claim, version: u64, message_id: &str, now_ms: i64) -> Decision {
    match existing {
        Claim::Ended {
            message_id: ran,
            report,
            ..
        } => Decision::AlreadyEnded {
            report: report.clone(),
            resend: ran == message_id,
        },
        Claim::Running { lease_until_ms, .. } if *lease_until_ms > now_ms => {
            let left = u64::try_from(lease_until_ms - now_ms).unwrap_or(0);
            Decision::HeldElsewhere(Duration::from_millis(left + 100))
        }
        Claim::Running { tries, .. } => Decision::TakeOver(version, *tries),
        Claim::Waiting { tries } => Decision::Resume(version, *tries),
    }
}

/// Milliseconds since the Unix epoch, by nimbus's one clock.
pub use nimbus_core::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::TaskStatus;

    fn report() -> TaskReport {
        TaskReport {
            task_id: "t".into(),
            session: None,
            kind: "task".into(),
            status: TaskStatus::Succeeded,
            error: None,
            duration_ms: 1.0,
            worker_id: "w".into(),
            output_bytes: 0,
            attempt: 1,
        }
    }

    #[test]
    fn decisions_follow_the_state_machine() {
        let now = 1_000_000;
        let live = Claim::Running {
            owner: "a".into(),
            lease_until_ms: now + 5_000,
            message_id: "m1".into(),
            tries: Tries::default(),
        };
        assert_eq!(
            decide(&live, 3, "m1", now),
            Decision::HeldElsewhere(Duration::from_millis(5_100))
        );
        let tries = Tries {
            retries: 1,
            crashes: 2,
        };
        let dead = Claim::Running {
            owner: "a".into(),
            lease_until_ms: now - 1,
            message_id: "m1".into(),
            tries,
        };
        assert_eq!(decide(&dead, 3, "m1", now), Decision::TakeOver(3, tries));
        let waiting = Claim::Waiting { tries };
        assert_eq!(decide(&waiting, 5, "m2", now), Decision::Resume(5, tries));
        let ended = Claim::Ended {
            message_id: "m1".into(),
            report: report(),
            ended_ms: now,
        };
        assert_eq!(
            decide(&ended, 4, "m1", now),
            Decision::AlreadyEnded {
                report: report(),
                resend: true
            }
        );
        assert_eq!(
            decide(&ended, 4, "m2", now),
            Decision::AlreadyEnded {
                report: report(),
                resend: false
            }
        );
    }

    #[test]
    fn a_claim_lease_ends_before_its_message_lease() {
        assert_eq!(
            claim_lease(Duration::from_secs(2)),
            Duration::from_millis(1750)
        );
        assert_eq!(
            claim_lease(Duration::from_secs(30)),
            Duration::from_millis(26_250)
        );
        assert_eq!(
            claim_lease(Duration::from_millis(400)),
            Duration::from_millis(300)
        );
        assert_eq!(
            claim_lease(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(claim_lease(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn claims_round_trip_and_corruption_is_an_error() {
        let c = Claim::running("w", "m", Duration::from_secs(30), Tries::default());
        assert_eq!(Claim::decode(&c.encode()).unwrap(), c);
        // Claims written before tries were counted read as none.
        let old = br#"{"state":"running","owner":"w","lease_until_ms":5,"message_id":"m"}"#;
        assert!(
            matches!(Claim::decode(old).unwrap(), Claim::Running { tries, .. } if tries == Tries::default())
        );
        assert!(Claim::decode(b"{").is_err());
    }
}

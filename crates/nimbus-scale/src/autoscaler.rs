//! The autoscaling loop: every interval it reads the watched queues' depths and the provider's
//! instances, asks the policy, and carries out its actions. A failed read or action is logged
//! and retried on the next tick; the loop never stops for one. After every tick it publishes the
//! fleet's status (instances, recent decisions with their reasons, depths over time) to the
//! ledger, where the web tier of any process reads it for `/api/v1/fleet`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use nimbus_core::compute::WORKER_LOAD_PARTITION;
use nimbus_core::{
    ComputeProvider, Condition, Engine, Instance, InstanceState, ItemKey, LaunchSpec, QueueName,
    WorkerLoad,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::policy::{Action, Decision, InstanceView, Policy, QueueLoad, Snapshot};

/// The ledger partition and key of the fleet's status.
pub const STATUS_PARTITION: &str = "fleet";
/// See [`STATUS_PARTITION`].
pub const STATUS_KEY: &str = "status";
/// Decisions kept in the status.
const DECISIONS_KEPT: usize = 50;
/// Samples kept in the status (an hour at the default interval).
const SAMPLES_KEPT: usize = 720;
/// The most the status item may take: under the ledger's 400 KiB item limit, with room.
const STATUS_BYTES: usize = 300 * 1024;
/// How old a worker's load report may be and still count (it reports every 2 s).
const LOAD_FRESH: Duration = Duration::from_secs(10);
/// How long a launched instance may take to show in the provider's listing.
const LAUNCH_VISIBLE: Duration = Duration::from_secs(60);

/// What the loop watches and launches.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// The queues whose work the fleet does.
    pub queues: Vec<QueueName>,
    /// What a launched instance runs.
    pub spec: LaunchSpec,
    /// How often the loop decides.
    pub interval: Duration,
}

/// One instance in the fleet's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The provider's id.
    pub id: String,
    /// Its state (EC2's names).
    pub state: String,
    /// Seconds since it was launched.
    pub age_s: u64,
    /// Tasks its worker runs, where it reports them.
    pub tasks: Option<u32>,
}

/// A decision the loop carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// The actions, in words (`launch 2`, `stop w-3`).
    pub actions: Vec<String>,
    /// Why.
    pub reason: String,
    /// Actions the provider refused, with its error.
    pub errors: Vec<String>,
}

/// The fleet and its queues at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// Instances pending.
    pub pending: u32,
    /// Instances running.
    pub running: u32,
    /// Instances stopping or shutting down.
    pub stopping: u32,
    /// Instances stopped.
    pub stopped: u32,
    /// Visible messages in the watched queues.
    pub visible: u64,
    /// In-flight messages.
    pub in_flight: u64,
    /// Delayed messages.
    pub delayed: u64,
}

/// What `/api/v1/fleet` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The policy's name.
    pub policy: String,
    /// The watched queues.
    pub queues: Vec<String>,
    /// When the status was written, in milliseconds since the epoch.
    pub updated_ms: u64,
    /// The instances, by id.
    pub instances: Vec<InstanceStatus>,
    /// Recent decisions that did something, newest last.
    pub decisions: Vec<DecisionRecord>,
    /// The fleet and queue depths over time, oldest first.
    pub samples: Vec<Sample>,
    /// The last error reading the queues or the fleet, if the last tick had one.
    pub last_error: Option<String>,
}

impl FleetStatus {
    /// The status as the ledger holds it, if an autoscaler has written one.
    pub async fn read(engine: &Engine) -> nimbus_core::Result<Option<Self>> {
        let Some(item) = engine.ledger.get(&status_key()).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&item.value).map(Some).map_err(|e| {
            nimbus_core::Error::internal("the fleet status does not decode").with_source(e)
        })
    }
}

fn status_key() -> ItemKey {
    ItemKey::new(STATUS_PARTITION, STATUS_KEY).expect("a valid ledger key")
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The autoscaling loop.
pub struct Autoscaler {
    engine: Engine,
    provider: Arc<dyn ComputeProvider>,
    policy: Box<dyn Policy>,
    config: AutoscalerConfig,
    history: VecDeque<(Instant, u64)>,
    last_message: Option<Instant>,
    last_action: Option<Instant>,
    last_total: u64,
    status: FleetStatus,
    /// Instances launched lately, with when: counted until the provider lists them.
    launched: Vec<(String, Instant)>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("policy", &self.policy.name())
            .field("queues", &self.config.queues)
            .finish_non_exhaustive()
    }
}

impl Autoscaler {
    /// A loop over `engine`'s queues and `provider`'s fleet, deciding with `policy`.
    pub fn new(
        engine: Engine,
        provider: Arc<dyn ComputeProvider>,
        policy: Box<dyn Policy>,
        config: AutoscalerConfig,
    ) -> Self {
        let status = FleetStatus {
            policy: policy.name().to_string(),
            queues: config.queues.iter().map(ToString::to_string).collect(),
            ..FleetStatus::default()
        };
        Self {
            engine,
            provider,
            policy,
            config,
            history: VecDeque::new(),
            last_message: None,
            last_action: None,
            last_total: 0,
            status,
            launched: Vec::new(),
        }
    }

    /// Runs a tick every interval until `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(policy = self.policy.name(), queues = ?self.config.queues,
            interval = ?self.config.interval, "autoscaler started");
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.tick().await;
        }
        tracing::info!("autoscaler stopped");
    }

    /// One decision: reads, decides, acts, publishes. Returns the decision (`None` when the
    /// queues or the fleet could not be read).
    pub async fn tick(&mut self) -> Option<Decision> {
        let now = Instant::now();
        let read = self.read().await;
        let (queues, instances) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "autoscaler: cannot read the queues or the fleet; trying again next tick");
                self.status.last_error = Some(e.to_string());
                self.publish().await;
                return None;
            }
        };
        self.status.last_error = None;
        let loads = self.loads().await;
        let snapshot = self.snapshot(now, queues, &instances, &loads);
        let decision = self.policy.decide(&snapshot);
        let errors = self.apply(&decision.actions).await;
        if !decision.actions.is_empty() {
            self.last_action = Some(now);
            tracing::info!(actions = ?decision.actions, reason = %decision.reason, "autoscaler acted");
            self.record(&decision, errors);
        }
        self.history.push_front((now, snapshot.backlog()));
        let keep = self.policy.history() + self.config.interval * 2;
        while self.history.back().is_some_and(|(t, _)| now - *t > keep) {
            self.history.pop_back();
        }
        self.sample(&snapshot);
        self.publish().await;
        Some(decision)
    }

    async fn read(&self) -> nimbus_core::Result<(Vec<QueueLoad>, Vec<Instance>)> {
        let mut queues = Vec::new();
        for q in &self.config.queues {
            let depth = self.engine.queue.depth(q).await?;
            queues.push(QueueLoad {
                name: q.to_string(),
                visible: depth.visible,
                in_flight: depth.in_flight,
                delayed: depth.delayed,
            });
        }
        Ok((queues, self.provider.list().await?))
    }

    /// The loads workers reported lately, by worker id; none where they cannot be read (the
    /// policy then treats every instance's load as unknown).
    async fn loads(&self) -> HashMap<String, WorkerLoad> {
        let now = epoch_ms(SystemTime::now());
        match self.engine.ledger.list(WORKER_LOAD_PARTITION).await {
            Ok(items) => items
                .into_iter()
                .filter_map(|(id, item)| {
                    Some((id, serde_json::from_slice::<WorkerLoad>(&item.value).ok()?))
                })
                .filter(|(_, load)| now.saturating_sub(load.at_ms) <= LOAD_FRESH.as_millis() as u64)
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the workers' loads");
                HashMap::new()
            }
        }
    }

    fn snapshot(
        &mut self,
        now: Instant,
        queues: Vec<QueueLoad>,
        instances: &[Instance],
        loads: &HashMap<String, WorkerLoad>,
    ) -> Snapshot {
        let visible: u64 = queues.iter().map(|q| q.visible).sum();
        let total: u64 = queues
            .iter()
            .map(|q| q.visible + q.in_flight + q.delayed)
            .sum();
        if visible > 0 || total > self.last_total {
            self.last_message = Some(now);
        }
        self.last_total = total;
        let wall = SystemTime::now();
        // A provider's listing may lag its launches (EC2's is eventually consistent): what was
        // launched lately and is not listed yet counts as pending, so it is not launched twice.
        self.launched.retain(|(id, at)| {
            now - *at < LAUNCH_VISIBLE && !instances.iter().any(|i| &i.id == id)
        });
        let unlisted = self.launched.iter().map(|(id, at)| InstanceView {
            id: id.clone(),
            state: InstanceState::Pending,
            age: now - *at,
            busy: None,
            idle_for: None,
        });
        let unlisted: Vec<InstanceView> = unlisted.collect();
        Snapshot {
            queues,
            instances: instances
                .iter()
                .map(|i| InstanceView {
                    id: i.id.clone(),
                    state: i.state,
                    age: i
                        .launched_at
                        .and_then(|t| wall.duration_since(t).ok())
                        .unwrap_or_default(),
                    busy: loads.get(&i.id).map(|l| l.running),
                    // Idle since the report too, if it was idle then.
                    idle_for: loads.get(&i.id).map(|l| {
                        let since = epoch_ms(wall).saturating_sub(l.at_ms);
                        Duration::from_millis(if l.running == 0 { l.idle_ms + since } else { 0 })
                    }),
                })
                .chain(unlisted)
                .collect(),
            since_last_message: self.last_message.map(|t| now - t),
            since_last_action: self.last_action.map(|t| now - t),
            history: self.history.iter().map(|&(t, b)| (now - t, b)).collect(),
        }
    }

    /// Carries out `actions`; the errors, each logged, for the record.
    async fn apply(&mut self, actions: &[Action]) -> Vec<String> {
        let mut errors = Vec::new();
        for action in actions {
            let result = match action {
                Action::Launch(n) => match self.provider.launch(&self.config.spec, *n).await {
                    Ok(ids) => {
                        let now = Instant::now();
                        self.launched.extend(ids.into_iter().map(|id| (id, now)));
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Action::Start(ids) => self.provider.start(ids).await,
                Action::Stop(ids) => self.provider.stop(ids).await,
                Action::Terminate(ids) => self.provider.terminate(ids).await,
            };
            if let Err(e) = result {
                tracing::warn!(?action, error = %e, "autoscaler: the provider refused an action; trying again next tick");
                errors.push(format!("{}: {e}", describe(action)));
            }
        }
        errors
    }

    fn record(&mut self, decision: &Decision, errors: Vec<String>) {
        self.status.decisions.push(DecisionRecord {
            at_ms: epoch_ms(SystemTime::now()),
            actions: decision.actions.iter().map(describe).collect(),
            reason: decision.reason.clone(),
            errors,
        });
        let excess = self.status.decisions.len().saturating_sub(DECISIONS_KEPT);
        self.status.decisions.drain(..excess);
    }

    fn sample(&mut self, s: &Snapshot) {
        let count = |states: &[InstanceState]| {
            u32::try_from(
                s.instances
                    .iter()
                    .filter(|i| states.contains(&i.state))
                    .count(),
            )
            .unwrap_or(u32::MAX)
        };
        self.status.instances = s
            .instances
            .iter()
            .map(|i| InstanceStatus {
                id: i.id.clone(),
                state: i.state.to_string(),
                age_s: i.age.as_secs(),
                tasks: i.busy,
            })
            .collect();
        self.status.samples.push(Sample {
            at_ms: epoch_ms(SystemTime::now()),
            pending: count(&[InstanceState::Pending]),
            running: count(&[InstanceState::Running]),
            stopping: count(&[InstanceState::Stopping, InstanceState::ShuttingDown]),
            stopped: count(&[InstanceState::Stopped]),
            visible: s.visible(),
            in_flight: s.in_flight(),
            delayed: s.queues.iter().map(|q| q.delayed).sum(),
        });
        let excess = self.status.samples.len().saturating_sub(SAMPLES_KEPT);
        self.status.samples.drain(..excess);
    }

    async fn publish(&mut self) {
        self.status.updated_ms = epoch_ms(SystemTime::now());
        let body = loop {
            let body = match serde_json::to_vec(&self.status) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the fleet status");
                    return;
                }
            };
            // A large fleet's status outgrows the item: the oldest history goes first.
            if body.len() <= STATUS_BYTES
                || (self.status.samples.len() <= 1 && self.status.decisions.len() <= 1)
            {
                break body;
            }
            let (samples, decisions) = (self.status.samples.len(), self.status.decisions.len());
            self.status.samples.drain(..samples / 2);
            self.status.decisions.drain(..decisions / 2);
        };
        if let Err(e) = self
            .engine
            .ledger
            .put(&status_key(), Bytes::from(body), Condition::Always)
            .await
        {
            tracing::warn!(error = %e, "cannot publish the fleet status");
        }
    }

    /// The status as last published.
    pub fn status(&self) -> &FleetStatus {
        &self.status
    }
}

/// An action in words.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Launch(n) => format!("launch {n}"),
        Action::Start(ids) => format!("start {}", ids.join(" ")),
        Action::Stop(ids) => format!("stop {}", ids.join(" ")),
        Action::Terminate(ids) => format!("terminate {}", ids.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use nimbus_core::{OutgoingMessage, QueueOptions};

    use super::*;
    use crate::policy::{by_name, Tuning};

    /// Instances in memory, with failures on demand: what a flaky cloud API does.
    #[derive(Default)]
    struct Flaky {
        instances: Mutex<Vec<Instance>>,
        failing_lists: AtomicU32,
        failing_launches: AtomicU32,
    }

    fn failure(what: &str) -> nimbus_core::Error {
        nimbus_core::Error::new(
            nimbus_core::ErrorKind::Unavailable,
            format!("{what}: the provider is down"),
        )
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    #[async_trait]
    impl ComputeProvider for Flaky {
        async fn list(&self) -> nimbus_core::Result<Vec<Instance>> {
            if take(&self.failing_lists) {
                return Err(failure("list"));
            }
            Ok(self.instances.lock().unwrap().clone())
        }
        async fn launch(&self, _: &LaunchSpec, count: u32) -> nimbus_core::Result<Vec<String>> {
            if take(&self.failing_launches) {
                return Err(failure("launch"));
            }
            let mut all = self.instances.lock().unwrap();
            let ids: Vec<String> = (0..count)
                .map(|k| format!("i-{}", all.len() + k as usize))
                .collect();
            all.extend(ids.iter().map(|id| Instance {
                id: id.clone(),
                state: InstanceState::Running,
                launched_at: Some(SystemTime::now()),
            }));
            Ok(ids)
        }
        async fn start(&self, _: &[String]) -> nimbus_core::Result<()> {
            Ok(())
        }
        async fn stop(&self, _: &[String]) -> nimbus_core::Result<()> {
            Ok(())
        }
        async fn terminate(&self, _: &[String]) -> nimbus_core::Result<()> {
            Ok(())
        }
    }

    async fn setup() -> (tempfile::TempDir, Engine, QueueName) {
        let dir = tempfile::tempdir().unwrap();
        let engine = nimbus_sqlite::SqliteEngine::open(dir.path().join("db"), Default::default())
            .unwrap()
            .into_engine(dir.path().join("blobs"))
            .unwrap();
        let q = QueueName::new("work").unwrap();
        engine
            .queue
            .create_queue(&q, &QueueOptions::default())
            .await
            .unwrap();
        (dir, engine, q)
    }

    fn scaler(engine: &Engine, provider: Arc<Flaky>, q: &QueueName) -> Autoscaler {
        let tuning = Tuning {
            min: Some(0),
            max: Some(4),
            idle: Some(Duration::from_secs(60)),
            per_instance: Some(1.0),
        };
        let config = AutoscalerConfig {
            queues: vec![q.clone()],
            spec: LaunchSpec::default(),
            interval: Duration::from_millis(10),
        };
        Autoscaler::new(
            engine.clone(),
            provider,
            by_name("backlog", &tuning).unwrap(),
            config,
        )
    }

    #[tokio::test]
    async fn provider_errors_are_recorded_and_the_next_tick_tries_again() {
        let (_dir, engine, q) = setup().await;
        let provider = Arc::new(Flaky::default());
        let mut scaler = scaler(&engine, provider.clone(), &q);
        engine
            .queue
            .send_batch(&q, vec![OutgoingMessage::new("job"); 3])
            .await
            .unwrap();

        provider.failing_lists.store(1, Ordering::SeqCst);
        assert!(
            scaler.tick().await.is_none(),
            "no decision without the fleet"
        );
        let status = FleetStatus::read(&engine).await.unwrap().unwrap();
        assert!(
            status.last_error.unwrap().contains("the provider is down"),
            "the error is published"
        );

        provider.failing_launches.store(1, Ordering::SeqCst);
        let decision = scaler.tick().await.unwrap();
        assert_eq!(decision.actions, vec![Action::Launch(3)]);
        let record = scaler.status().decisions.last().unwrap().clone();
        assert_eq!(record.actions, ["launch 3"]);
        assert!(
            record.errors[0].contains("launch 3: launch: the provider is down"),
            "{record:?}"
        );
        assert!(provider.instances.lock().unwrap().is_empty());

        let again = scaler.tick().await.unwrap();
        assert_eq!(
            again.actions,
            vec![Action::Launch(3)],
            "the launch is tried again"
        );
        assert_eq!(provider.instances.lock().unwrap().len(), 3);
        let steady = scaler.tick().await.unwrap();
        assert!(steady.actions.is_empty(), "{}", steady.reason);
        let status = FleetStatus::read(&engine).await.unwrap().unwrap();
        assert_eq!(status.last_error, None);
        assert_eq!(status.instances.len(), 3);
        assert_eq!(status.samples.last().unwrap().running, 3);
        assert_eq!(status.samples.last().unwrap().visible, 3);
        assert_eq!(
            status.decisions.len(),
            2,
            "only decisions that did something are kept"
        );
    }

    #[tokio::test]
    async fn the_loop_stops_on_its_token() {
        let (_dir, engine, q) = setup().await;
        let stop = CancellationToken::new();
        let looping =
            tokio::spawn(scaler(&engine, Arc::new(Flaky::default()), &q).run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), looping)
            .await
            .unwrap()
            .unwrap();
        let status = FleetStatus::read(&engine).await.unwrap().unwrap();
        assert!(
            status.samples.len() >= 2,
            "it ticked every interval: {}",
            status.samples.len()
        );
    }
}

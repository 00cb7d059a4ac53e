//! The worker loop: receivers fill free concurrency slots, each task runs in its own tokio task
//! with a heartbeat, and one completer records ends, then (in a second stage) sends reports and
//! deletes messages, in batches (group commit), so a busy worker pays a few engine calls per
//! batch, not per task.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use nimbus_core::compute::{WORKER_LOAD_INTERVAL, WORKER_LOAD_PARTITION};
use nimbus_core::queue::{MAX_BATCH, MAX_VISIBILITY_TIMEOUT};
use nimbus_core::task::{ATTR_KIND, ATTR_REPLY_TO, ATTR_SESSION, ATTR_TASK_ID};
use nimbus_core::{
    Condition, Delivery, Engine, ErrorKind, ItemKey, OutgoingMessage, QueueName, ReceiveRequest,
    Result, TaskReport, TaskStatus, WorkerLoad,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::claim::{claim_key, decide, now_ms, Claim, Decision, Tries};
use crate::{Handlers, Outcome, TaskContext};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker in claims and reports.
    pub worker_id: String,
    /// The queues it receives from.
    pub queues: Vec<QueueName>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Most messages per receive.
    pub batch: usize,
    /// Each delivery's lease; renewed every half of it while the handler runs.
    pub visibility: Duration,
    /// Long-poll wait of one receive (short, so shutdown is prompt).
    pub poll_wait: Duration,
    /// How long running handlers may finish after shutdown before their messages are released.
    pub grace: Duration,
    /// Stop by itself after this long with nothing received and nothing running.
    pub exit_when_idle: Option<Duration>,
    /// Claim task ids in the ledger so a task id runs once (off: at-least-once only).
    pub dedup: bool,
    /// How ended claims are swept (one sweeper at a time across all workers); `None`: this
    /// worker never sweeps.
    pub sweep: Option<crate::sweep::SweepConfig>,
    /// A task whose worker ended while running it this many times fails for good instead of
    /// running again (it may be what kills its workers). With dedup only: the claim counts.
    pub max_crashes: u32,
    /// When a finished task's concurrency slot takes the next task.
    pub free_slot: FreeSlot,
}

/// When a finished task's slot is free for the next one. A worker killed between a task's
/// effect and the durable record of its end runs that task again on the next delivery (the
/// documented window); how many tasks are inside it at a kill is, by Little's law, the rate at
/// which tasks end times how long an end waits to be recorded. docs/benchmarks.md measures
/// both: about as many tasks run twice per kill either way, and `Recorded` costs 10 to 20 % of
/// the throughput of no-op tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum FreeSlot {
    /// Once the end is durable (the claim ended; without dedup, the message acknowledged): a
    /// worker never has more unrecorded ends than slots, whatever stalls its engine, and a
    /// slot's next task never delays the record of its last.
    Recorded,
    /// As soon as the handler returns, before its end is recorded: the next task starts sooner.
    #[default]
    Finished,
}

impl FreeSlot {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Finished => "finished",
        }
    }
}

impl std::fmt::Display for FreeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FreeSlot {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match [Self::Recorded, Self::Finished].into_iter().find(|m| m.name() == s) {
            Some(moment) => Ok(moment),
            None => Err(format!(
                "`{s}` is not a moment to free a slot: `recorded` (once the task's end is durable) or `finished` (once its handler returns)"
            )),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", std::process::id()),
            queues: Vec::new(),
            concurrency: 16,
            batch: 100,
            visibility: Duration::from_secs(30),
            poll_wait: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            exit_when_idle: None,
            dedup: true,
            sweep: Some(crate::sweep::SweepConfig::default()),
            max_crashes: DEFAULT_MAX_CRASHES,
            free_slot: FreeSlot::default(),
        }
    }
}

/// How many crashes of its workers a task is allowed by default (as Sidekiq's poison-pill
/// detection allows): one crash is a fault, three in a row running alone is the task.
pub const DEFAULT_MAX_CRASHES: u32 = 3;

/// What a worker did, counted when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Runs that asked to be retried.
    pub retried: u64,
    /// Deliveries of tasks that had already ended (acknowledged without running).
    pub duplicates: u64,
    /// Tasks given back unfinished at shutdown.
    pub released: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    duplicates: AtomicU64,
    released: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
        }
    }
}

/// A worker: handlers over an engine, run until shutdown.
pub struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    handlers: Handlers,
    config: WorkerConfig,
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    last_activity: Mutex<Instant>,
    /// Fires when the grace period is over: running tasks are given back.
    abandon: CancellationToken,
    counters: Counters,
    /// How many [`Pending`] deliveries there are: while any, nothing is received.
    pending: Arc<watch::Sender<usize>>,
}

/// Held by a delivery this worker holds but has not started: one whose task another claim
/// holds, until that is resolved (a takeover: until it holds every slot, to run alone), and one
/// that found every slot taken, until it gets one. While any is held the worker receives
/// nothing: a message received then could find no free slot and wait too, or, before a
/// takeover, make it wait longer with its message held, and a kill during such a wait spends a
/// receive of the message for nothing (under dense faults, spent receives dead-lettered tasks
/// that were not poison).
struct Pending(Arc<watch::Sender<usize>>);

impl Pending {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// One delivery being worked on.
#[derive(Clone)]
struct Job {
    queue: QueueName,
    delivery: Delivery,
    task_id: String,
    kind: String,
    /// The claim's version while this worker owns it (None without dedup).
    version: Option<u64>,
    /// Its tries before this run, as the claim counts them.
    tries: Tries,
    /// Another delivery of the message holds it now, so its visibility can no longer be
    /// extended; the claim, still ours, decides who runs the task.
    receipt_stale: bool,
}

/// A finished run waiting to be recorded.
struct Completion {
    job: Job,
    outcome: Outcome,
    duration: Duration,
    /// Renews the lease until the end is recorded (none for a task that ended at once).
    keeper: Option<LeaseKeeper>,
    /// The task's concurrency slot, when it is freed only once the end is durable
    /// ([`FreeSlot::Recorded`]).
    slot: Option<OwnedSemaphorePermit>,
}

impl Completion {
    /// A task that failed without running.
    fn failed(job: Job, reason: String) -> Self {
        Self {
            job,
            outcome: Outcome::Failed(reason),
            duration: Duration::ZERO,
            keeper: None,
            slot: None,
        }
    }
}

/// Renews a finished task's lease on the heartbeat's schedule until its end is recorded and its
/// message acknowledged: first the message's visibility and the claim, then, once the completer
/// has taken the claim's version to write the end, the visibility alone. A completer that stalls
/// past the lease, even in the middle of its writes, cannot hand a finished task to a second
/// worker. The completion holds the keeper; the task that ran the job runs the [`Renewal`] until
/// the keeper is dropped (no task of its own: a finished run costs no spawn).
struct LeaseKeeper {
    kept: Arc<tokio::sync::Mutex<Kept>>,
    _recorded: tokio::sync::oneshot::Sender<()>,
}

struct Kept {
    job: Job,
    /// Whether the claim is renewed too (until the completer writes the end on it).
    claim_too: bool,
    /// Whether the lease was lost (another worker owns the task).
    lost: bool,
}

/// The renewing side of a [`LeaseKeeper`]; ends when the keeper is dropped.
struct Renewal {
    shared: Arc<Shared>,
    kept: Arc<tokio::sync::Mutex<Kept>>,
    beat: tokio::time::Interval,
    recorded: tokio::sync::oneshot::Receiver<()>,
}

impl LeaseKeeper {
    fn new(shared: Arc<Shared>, job: Job, beat: tokio::time::Interval) -> (Self, Renewal) {
        let kept = Arc::new(tokio::sync::Mutex::new(Kept {
            job,
            claim_too: true,
            lost: false,
        }));
        let (recorded_tx, recorded) = tokio::sync::oneshot::channel();
        let renewal = Renewal {
            shared,
            kept: kept.clone(),
            beat,
            recorded,
        };
        (
            Self {
                kept,
                _recorded: recorded_tx,
            },
            renewal,
        )
    }

    /// The claim's version for the end to be written on (after a renewal under way), from now
    /// on no longer renewed; `None` when the lease was lost meanwhile.
    async fn claim_version(&self) -> Option<Option<u64>> {
        let mut kept = self.kept.lock().await;
        kept.claim_too = false;
        (!kept.lost).then_some(kept.job.version)
    }
}

impl Renewal {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                _ = &mut self.recorded => return,
                _ = self.beat.tick() => {}
            }
            let mut kept = self.kept.lock().await;
            let renewed = if kept.claim_too {
                renew(&self.shared, &mut kept.job).await
            } else {
                extend_visibility(&self.shared, &kept.job).await
            };
            match renewed {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(task_id = %kept.job.task_id, error = %e, "lease not extended yet; retrying")
                }
                Err(e) => {
                    tracing::warn!(task_id = %kept.job.task_id, error = %e, "lease lost while the end waited to be recorded");
                    kept.lost = true;
                    return;
                }
            }
        }
    }
}

impl Worker {
    /// A worker over `engine` with `handlers`.
    pub fn new(engine: Engine, handlers: Handlers, config: WorkerConfig) -> Self {
        let concurrency = config.concurrency.max(1);
        Self {
            shared: Arc::new(Shared {
                engine,
                handlers,
                slots: Arc::new(Semaphore::new(concurrency)),
                config: WorkerConfig {
                    concurrency,
                    batch: config.batch.clamp(1, MAX_BATCH),
                    ..config
                },
                running: AtomicUsize::new(0),
                last_activity: Mutex::new(Instant::now()),
                abandon: CancellationToken::new(),
                counters: Counters::default(),
                pending: Arc::new(watch::channel(0).0),
            }),
        }
    }

    /// Runs until `shutdown` fires (or the worker has been idle for `exit_when_idle`): stops
    /// receiving, lets running handlers finish within the grace period, gives back the
    /// messages of those that did not, records every end, and returns what it did.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerStats> {
        let shared = self.shared;
        let config = &shared.config;
        tracing::info!(worker = %config.worker_id, queues = ?config.queues, concurrency = config.concurrency,
            kinds = ?shared.handlers.kinds(), "worker started");
        let stop = shutdown.child_token();
        let (done_tx, done_rx) = mpsc::channel::<Completion>(4 * MAX_BATCH);
        let completer = tokio::spawn(complete_loop(shared.clone(), done_rx));
        let reporter = tokio::spawn(report_load(shared.clone(), stop.clone()));
        let sweeper = match config.sweep {
            Some(sweep) if config.dedup => Some(tokio::spawn(crate::sweep::run(
                shared.engine.clone(),
                config.worker_id.clone(),
                sweep,
                stop.clone(),
            ))),
            _ => None,
        };
        let receivers: Vec<_> = config
            .queues
            .iter()
            .map(|q| {
                tokio::spawn(receive_loop(
                    shared.clone(),
                    q.clone(),
                    stop.clone(),
                    done_tx.clone(),
                ))
            })
            .collect();
        drop(done_tx);
        for r in receivers {
            if let Err(e) = r.await {
                tracing::error!(error = %e, "receiver task failed");
            }
        }
        let all = u32::try_from(config.concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(config.grace, shared.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                running = shared.running.load(Ordering::Relaxed),
                "grace period over; releasing unfinished tasks"
            );
            shared.abandon.cancel();
        }
        if let Err(e) = completer.await {
            tracing::error!(error = %e, "completer task failed");
        }
        if let Some(sweeper) = sweeper {
            if let Err(e) = sweeper.await {
                tracing::error!(error = %e, "sweeper task failed");
            }
        }
        if let Err(e) = reporter.await {
            tracing::error!(error = %e, "load reporter task failed");
        }
        let stats = shared.counters.snapshot();
        tracing::info!(worker = %config.worker_id, ?stats, "worker stopped");
        Ok(stats)
    }
}

async fn receive_loop(
    shared: Arc<Shared>,
    queue: QueueName,
    stop: CancellationToken,
    done: mpsc::Sender<Completion>,
) {
    let config = &shared.config;
    let mut errors = 0u32;
    let mut pending = shared.pending.subscribe();
    while !stop.is_cancelled() {
        tokio::select! {
            settled = pending.wait_for(|n| *n == 0) => if settled.is_err() { break },
            () = stop.cancelled() => break,
        }
        // Wait for a free slot without holding it through the long poll: a worker on several
        // queues must not let an idle queue's poll keep slots from a busy one.
        tokio::select! {
            permit = shared.slots.acquire() => match permit { Ok(p) => drop(p), Err(_) => break },
            () = stop.cancelled() => break,
        }
        // The slot may have gone to a takeover waiting for all of them: receive nothing then.
        let free = shared.slots.available_permits();
        if free == 0 || *shared.pending.borrow() > 0 {
            continue;
        }
        let want = free.min(config.batch);
        let request = ReceiveRequest::new(want)
            .visibility(config.visibility)
            .wait(config.poll_wait);
        let got = match shared.engine.queue.receive(&queue, request).await {
            Ok(got) => {
                errors = 0;
                got
            }
            Err(e) => {
                errors += 1;
                let pause = Duration::from_millis(100 * u64::from(errors.min(50)));
                tracing::warn!(queue = %queue, error = %e, ?pause, "receive failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if got.is_empty() {
            stop_if_idle(&shared, &stop);
            continue;
        }
        *lock(&shared.last_activity) = Instant::now();
        // One free slot per message, taken without waiting; a message that finds none (another
        // queue's receiver took them meanwhile) waits for one, leased, one slot at a time, so
        // two receivers can never each hold half of what they need.
        let mut permits = Vec::with_capacity(got.len());
        while permits.len() < got.len() {
            match shared.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut jobs: Vec<Job> = got.into_iter().map(|d| job_of(&queue, d)).collect();
        for job in jobs.split_off(permits.len()) {
            let pending = Pending::new(&shared.pending);
            let (shared, done, stop) = (shared.clone(), done.clone(), stop.clone());
            tokio::spawn(async move { wait_for_a_slot(&shared, job, pending, &stop, &done).await });
        }
        if !jobs.is_empty() {
            dispatch(&shared, &queue, jobs, permits, &done).await;
        }
    }
}

/// Runs a message that found every slot taken when it arrived (another queue's receiver took
/// them meanwhile) once a slot frees, keeping it leased meanwhile, for at most half its lease;
/// then it goes back to the queue. Giving it back at once would spend one of its receives for
/// nothing: on a worker of four queues the chaos harness saw hundreds a minute, spent from the
/// same few messages (the oldest are received first) until they neared the dead-letter queue.
/// The worker receives nothing while it waits (`pending`); a worker that stops gives it back.
async fn wait_for_a_slot(
    shared: &Arc<Shared>,
    job: Job,
    pending: Pending,
    stop: &CancellationToken,
    done: &mpsc::Sender<Completion>,
) {
    let mut lease_from = Instant::now();
    let slot = async {
        tokio::select! {
            slot = tokio::time::timeout(shared.config.visibility / 2, shared.slots.clone().acquire_owned()) => slot.ok(),
            () = stop.cancelled() => None,
        }
    };
    match keep_leased(shared, &job, &mut lease_from, slot).await {
        Ok(Some(Some(Ok(permit)))) => {
            let queue = job.queue.clone();
            dispatch(shared, &queue, vec![job], vec![permit], done).await;
        }
        Ok(Some(_)) => {
            tracing::info!(task_id = %job.task_id, "no slot freed within half the lease (or the worker stops); the message goes back");
            if let Err(e) = hide(shared, &job, Duration::ZERO).await {
                tracing::debug!(task_id = %job.task_id, error = %e, "could not give back a message; it returns after its timeout");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(task_id = %job.task_id, error = %e, "lost the lease of a message waiting for a slot; it will be redelivered");
        }
    }
    drop(pending);
}

/// Reports this worker's load to the ledger every [`WORKER_LOAD_INTERVAL`] until `stop`, then
/// removes the report: an autoscaler takes only workers that report themselves idle.
async fn report_load(shared: Arc<Shared>, stop: CancellationToken) {
    let Ok(key) = ItemKey::new(WORKER_LOAD_PARTITION, &shared.config.worker_id) else {
        return; // a worker id too long to be a key: no reports, so never taken as idle
    };
    loop {
        let running = u32::try_from(shared.running.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let idle_ms = if running == 0 {
            u64::try_from(lock(&shared.last_activity).elapsed().as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let load = WorkerLoad {
            running,
            idle_ms,
            at_ms: u64::try_from(now_ms()).unwrap_or(0),
        };
        if let Ok(body) = serde_json::to_vec(&load) {
            if let Err(e) = shared
                .engine
                .ledger
                .put(&key, body.into(), Condition::Always)
                .await
            {
                tracing::debug!(error = %e, "cannot report the worker's load");
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(WORKER_LOAD_INTERVAL) => {}
        }
    }
    let _ = shared.engine.ledger.delete(&key, Condition::Always).await;
}

fn stop_if_idle(shared: &Shared, stop: &CancellationToken) {
    let Some(idle) = shared.config.exit_when_idle else {
        return;
    };
    if shared.running.load(Ordering::Relaxed) == 0 && lock(&shared.last_activity).elapsed() >= idle
    {
        tracing::info!(?idle, "idle; stopping");
        stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn job_of(queue: &QueueName, delivery: Delivery) -> Job {
    let attr = |name: &str| delivery.attributes.get(name).cloned();
    Job {
        task_id: attr(ATTR_TASK_ID).unwrap_or_else(|| delivery.message_id.clone()),
        kind: attr(ATTR_KIND).unwrap_or_default(),
        queue: queue.clone(),
        delivery,
        version: None,
        tries: Tries::default(),
        receipt_stale: false,
    }
}

/// Claims a received batch in one ledger call and starts what this worker won.
async fn dispatch(
    shared: &Arc<Shared>,
    queue: &QueueName,
    jobs: Vec<Job>,
    permits: Vec<OwnedSemaphorePermit>,
    done: &mpsc::Sender<Completion>,
) {
    if !shared.config.dedup {
        for (job, permit) in jobs.into_iter().zip(permits) {
            start(shared, job, permit, done);
        }
        return;
    }
    // A task id that cannot name a claim fails alone, at once, instead of holding back the
    // batch it came in (which would come back again and again with it).
    let (jobs, unclaimable): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .zip(permits)
        .partition(|(job, _)| claim_key(&job.task_id).is_ok());
    for (job, _permit) in unclaimable {
        let reason = format!(
            "task id is {} bytes; at most {} bytes are allowed",
            job.task_id.len(),
            crate::claim::MAX_TASK_ID_BYTES
        );
        fail_at_once(shared, done, job, reason).await;
    }
    let (jobs, permits): (Vec<Job>, Vec<_>) = jobs.into_iter().unzip();
    let claims = jobs
        .iter()
        .map(|j| {
            let claim = Claim::running(
                &shared.config.worker_id,
                &j.delivery.message_id,
                shared.config.visibility,
                Tries::default(),
            );
            Ok((claim_key(&j.task_id)?, claim.encode(), Condition::Absent))
        })
        .collect::<Result<Vec<_>>>();
    let won = match claims {
        Ok(claims) => shared.engine.ledger.put_batch(claims).await,
        Err(e) => Err(e),
    };
    let won = match won {
        Ok(won) => won,
        Err(e) => {
            // The messages come back after their visibility timeout; nothing is lost.
            tracing::warn!(queue = %queue, error = %e, "claiming a batch failed");
            return;
        }
    };
    for ((mut job, permit), version) in jobs.into_iter().zip(permits).zip(won) {
        match version {
            Some(v) => {
                job.version = Some(v);
                start(shared, job, permit, done);
            }
            None => {
                let (shared, done) = (shared.clone(), done.clone());
                let pending = Pending::new(&shared.pending);
                tokio::spawn(async move {
                    resolve_existing(&shared, job, permit, pending, &done).await;
                });
            }
        }
    }
}

/// How long a delivery that found its claim's lease over waits, holding the message, before it
/// takes the task over: longer than the completer's longest pause between tries of recording an
/// end ([`persist`]), so an owner that is alive (it could not write for a while: a full disk, a
/// throttled table, a stall) records its end or renews first, and only a dead owner's claim is
/// taken. Without it the chaos harness saw tasks run twice after a full disk: every write
/// failed past the lease, and when space came back another worker's takeover beat the owner's
/// next try at recording the end. At most half the visibility timeout.
const TAKEOVER_PROBE: Duration = Duration::from_secs(1);

/// How long a task that fails for good waits to be tried again when its handler could not end
/// what it keeps of it (the engine was busy).
const ABANDON_RETRY: Duration = Duration::from_secs(5);

/// Hands a task that cannot run to the completer as failed (its claim, if any, at
/// `job.version`), without a lease keeper: its end is recorded at once. Its handler is told
/// first, so that what it keeps elsewhere (a job record) ends too; when telling it fails, the
/// message comes back later and the task is failed then.
async fn fail_at_once(
    shared: &Arc<Shared>,
    done: &mpsc::Sender<Completion>,
    job: Job,
    reason: String,
) {
    if let Some(handler) = shared.handlers.get(&job.kind) {
        if let Err(e) = handler.abandoned(&context_of(shared, &job), &reason).await {
            tracing::warn!(task_id = %job.task_id, error = %e, "the handler could not end what it keeps of a task that fails for good; the message comes back");
            if let Err(e) = hide(shared, &job, ABANDON_RETRY).await {
                tracing::debug!(task_id = %job.task_id, error = %e, "could not hide the message; it returns after its timeout");
            }
            return;
        }
    }
    if done.send(Completion::failed(job, reason)).await.is_err() {
        tracing::error!("completer is gone; the task will be redelivered");
    }
}

/// A delivery whose task id was already claimed: decide by the claim's state. A takeover waits
/// for every slot of the worker, to run alone, and for the probe, at the same time: its
/// message is held for the longer of the two rather than for both one after the other.
async fn resolve_existing(
    shared: &Arc<Shared>,
    mut job: Job,
    permit: OwnedSemaphorePermit,
    pending: Pending,
    done: &mpsc::Sender<Completion>,
) {
    let result: Result<()> = async {
        let key = claim_key(&job.task_id)?;
        let ledger = &shared.engine.ledger;
        let queue = &shared.engine.queue;
        let mut slot = permit;
        let mut pending = Some(pending);
        let mut alone = false;
        let mut lease_from = Instant::now();
        let waiting = Instant::now();
        // The lapsed claim's version, and when this delivery first found it so.
        let mut lapsed: Option<(u64, Instant)> = None;
        loop {
            let Some(item) = ledger.get(&key).await? else {
                // Released meanwhile (a retry or a shutdown): try once more later.
                return hide(shared, &job, Duration::from_millis(200)).await;
            };
            let decision = decide(&Claim::decode(&item.value)?, item.version, &job.delivery.message_id, now_ms());
            tracing::debug!(task_id = %job.task_id, receives = job.delivery.receive_count, ?decision, "a delivery found its task claimed");
            let (version, tries) = match decision {
                Decision::AlreadyEnded { report, resend } => {
                    if resend {
                        send_reports(shared, &[(&job, report)]).await?;
                    }
                    queue.delete(&job.queue, &job.delivery.receipt).await?;
                    shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(task_id = %job.task_id, resend, "task already ended; acknowledged");
                    return Ok(());
                }
                Decision::HeldElsewhere(wait) => return hide(shared, &job, wait).await,
                Decision::Resume(version, tries) => {
                    return claim_and_start(shared, job, version, tries, slot, done).await;
                }
                Decision::TakeOver(version, tries) => (version, Tries { crashes: tries.crashes + 1, ..tries }),
            };
            let first_seen = match lapsed {
                Some((seen, since)) if seen == version => since,
                _ => lapsed.insert((version, Instant::now())).1,
            };
            let probe_over = first_seen + TAKEOVER_PROBE.min(shared.config.visibility / 2);
            let poison = tries.crashes >= shared.config.max_crashes;
            if Instant::now() >= probe_over && poison {
                let reason = format!(
                    "its worker ended while running it {} times (the task may be what kills it); not run again",
                    tries.crashes
                );
                tracing::warn!(task_id = %job.task_id, crashes = tries.crashes, "a task that may kill its workers fails for good");
                job.version = Some(version);
                job.tries = tries;
                fail_at_once(shared, done, job, reason).await;
                return Ok(());
            }
            if Instant::now() >= probe_over && alone {
                tracing::info!(task_id = %job.task_id, crashes = tries.crashes, waited_ms = waiting.elapsed().as_millis(),
                    "taking over, alone, a task whose owner stopped renewing");
                return claim_and_start(shared, job, version, tries, slot, done).await;
            }
            if !alone && !poison {
                tracing::info!(task_id = %job.task_id, crashes = tries.crashes, receives = job.delivery.receive_count,
                    running = shared.running.load(Ordering::Relaxed), "a task whose owner stopped renewing waits to run alone");
                // Its slot is given up while it waits for all of them, so two takeovers
                // waiting on one worker cannot each hold a slot the other needs. One
                // acquisition for the whole wait: the semaphore is fair, so it keeps its place.
                drop(slot);
                let all = u32::try_from(shared.config.concurrency).unwrap_or(u32::MAX);
                let every_slot = shared.slots.clone().acquire_many_owned(all);
                let Some(Ok(every_slot)) = keep_leased(shared, &job, &mut lease_from, every_slot).await? else {
                    return Ok(());
                };
                slot = every_slot;
                alone = true;
                drop(pending.take());
            }
            // Then the rest of the probe, and a second look at the claim: an owner that is
            // alive records its end or renews meanwhile.
            let probe = tokio::time::sleep_until(probe_over);
            if keep_leased(shared, &job, &mut lease_from, probe).await?.is_none() {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "resolving a claimed task failed; it will be redelivered");
    }
}

/// Claims the task (compare-and-swap on the claim at `version`) and starts it holding `permit`;
/// when the claim changed meanwhile, the message is hidden a moment and looks again.
async fn claim_and_start(
    shared: &Arc<Shared>,
    mut job: Job,
    version: u64,
    tries: Tries,
    permit: OwnedSemaphorePermit,
    done: &mpsc::Sender<Completion>,
) -> Result<()> {
    match put_running(shared, &job, version, tries).await? {
        Some(v) => {
            job.version = Some(v);
            job.tries = tries;
            start(shared, job, permit, done);
            Ok(())
        }
        None => hide(shared, &job, Duration::from_secs(1)).await,
    }
}

/// Writes this worker's running claim of `job` (a fresh lease, `tries`) if the claim is still
/// at `version`; its new version, or `None` when it was not.
async fn put_running(
    shared: &Shared,
    job: &Job,
    version: u64,
    tries: Tries,
) -> Result<Option<u64>> {
    let claim = Claim::running(
        &shared.config.worker_id,
        &job.delivery.message_id,
        shared.config.visibility,
        tries,
    );
    shared
        .engine
        .ledger
        .put(
            &claim_key(&job.task_id)?,
            claim.encode(),
            Condition::Version(version),
        )
        .await
}

/// Waits for `ready`, holding the delivery's message: its visibility is extended on the
/// heartbeat's schedule from `lease_from` (when it was last extended, updated here). `None`
/// when the worker gives its tasks up first: the message is released.
async fn keep_leased<T>(
    shared: &Shared,
    job: &Job,
    lease_from: &mut Instant,
    ready: impl std::future::Future<Output = T>,
) -> Result<Option<T>> {
    tokio::pin!(ready);
    let mut beat = heartbeat(shared, *lease_from);
    loop {
        tokio::select! {
            out = &mut ready => return Ok(Some(out)),
            _ = beat.tick() => match extend_visibility(shared, job).await {
                Ok(()) => *lease_from = Instant::now(),
                Err(e) if e.is_retryable() => tracing::warn!(task_id = %job.task_id, error = %e, "lease not extended yet; retrying"),
                Err(e) => return Err(e),
            },
            () = shared.abandon.cancelled() => {
                hide(shared, job, Duration::ZERO).await?;
                return Ok(None);
            }
        }
    }
}

/// The lease renewals of a delivery held from `from`: every half visibility timeout.
fn heartbeat(shared: &Shared, from: Instant) -> tokio::time::Interval {
    let period = (shared.config.visibility / 2).max(Duration::from_millis(50));
    tokio::time::interval_at(from + period, period)
}

async fn hide(shared: &Shared, job: &Job, wait: Duration) -> Result<()> {
    let wait = wait.min(MAX_VISIBILITY_TIMEOUT);
    match shared
        .engine
        .queue
        .change_visibility(&job.queue, &job.delivery.receipt, wait)
        .await
    {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Runs one job in its own task, holding its concurrency slot until the end is handed over.
fn start(
    shared: &Arc<Shared>,
    job: Job,
    permit: OwnedSemaphorePermit,
    done: &mpsc::Sender<Completion>,
) {
    let (shared, done) = (shared.clone(), done.clone());
    shared.running.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let mut renewal = None;
        let mut permit = Some(permit);
        if let Some((mut completion, renew)) = run_job(&shared, job).await {
            if shared.config.free_slot == FreeSlot::Recorded {
                completion.slot = permit.take();
            }
            if done.send(completion).await.is_err() {
                tracing::error!("completer is gone; the task will be redelivered");
            }
            renewal = renew;
        }
        // Idle time counts from the last task's end too, not only from the last receive: a
        // worker that just finished a long task is not idle yet.
        *lock(&shared.last_activity) = Instant::now();
        shared.running.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        drop(done);
        if let Some(renewal) = renewal {
            renewal.run().await;
        }
    });
}

/// What a handler is told of `job`.
fn context_of(shared: &Shared, job: &Job) -> TaskContext {
    TaskContext {
        task_id: job.task_id.clone(),
        kind: job.kind.clone(),
        worker_id: shared.config.worker_id.clone(),
        queue: job.queue.clone(),
        delivery: job.delivery.clone(),
        engine: shared.engine.clone(),
        cancel: CancellationToken::new(),
    }
}

/// Runs the handler with a heartbeat; `None` when the task was given back or its lease lost.
/// The renewal keeps the lease until the completion is recorded.
async fn run_job(shared: &Arc<Shared>, mut job: Job) -> Option<(Completion, Option<Renewal>)> {
    let Some(handler) = shared.handlers.get(&job.kind) else {
        let reason = format!(
            "no handler for kind `{}` on worker {} (it runs {:?})",
            job.kind,
            shared.config.worker_id,
            shared.handlers.kinds()
        );
        return Some((Completion::failed(job, reason), None));
    };
    let context = context_of(shared, &job);
    let started = Instant::now();
    let run = AssertUnwindSafe(handler.handle(&context)).catch_unwind();
    tokio::pin!(run);
    let mut beat = heartbeat(shared, started);
    let outcome = loop {
        tokio::select! {
            result = &mut run => break result.unwrap_or_else(|panic| Outcome::Failed(format!("handler panicked: {}", panic_text(&*panic)))),
            _ = beat.tick() => {
                match renew(shared, &mut job).await {
                    Ok(()) => {}
                    // A busy engine: the lease still has half its time; try again next beat.
                    Err(e) if e.is_retryable() => tracing::warn!(task_id = %job.task_id, error = %e, "lease not extended yet; retrying"),
                    Err(e) => {
                        tracing::warn!(task_id = %job.task_id, error = %e, "lease lost; abandoning the task");
                        context.cancel.cancel();
                        return None;
                    }
                }
            }
            () = shared.abandon.cancelled() => {
                context.cancel.cancel();
                give_back(shared, &job).await;
                return None;
            }
        }
    };
    let duration = started.elapsed();
    let (keeper, renewal) = LeaseKeeper::new(shared.clone(), job.clone(), beat);
    Some((
        Completion {
            job,
            outcome,
            duration,
            keeper: Some(keeper),
            slot: None,
        },
        Some(renewal),
    ))
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_string())
}

/// Extends the message's visibility by one lease.
async fn extend_visibility(shared: &Shared, job: &Job) -> Result<()> {
    shared
        .engine
        .queue
        .change_visibility(&job.queue, &job.delivery.receipt, shared.config.visibility)
        .await
}

/// Extends the message's visibility and the claim's lease together. The claim decides who
/// owns the task: when the message was delivered again meanwhile (every write stalled past its
/// lease: a stopped process holding the engine's write lock, a full disk) the claim is still
/// renewed, and the new delivery finds it live and waits, instead of this run being abandoned
/// and the task run twice.
async fn renew(shared: &Shared, job: &mut Job) -> Result<()> {
    if !job.receipt_stale {
        match extend_visibility(shared, job).await {
            Err(e) if !e.is_retryable() && job.version.is_some() => {
                tracing::info!(task_id = %job.task_id, error = %e, "message delivered again meanwhile; the claim still holds the task");
                job.receipt_stale = true;
            }
            other => other?,
        }
    }
    if let Some(version) = job.version {
        let renewed = put_running(shared, job, version, job.tries).await?;
        job.version =
            Some(renewed.ok_or_else(|| {
                nimbus_core::Error::conflict("another worker took the task over")
            })?);
    }
    tracing::debug!(task_id = %job.task_id, "lease extended");
    Ok(())
}

/// Releases an unfinished task at shutdown: the claim waits (with its tries) and the message
/// is made visible.
async fn give_back(shared: &Shared, job: &Job) {
    release_claim(shared, job, job.tries).await;
    if let Err(e) = hide(shared, job, Duration::ZERO).await {
        tracing::warn!(task_id = %job.task_id, error = %e, "could not release the message; it returns after its timeout");
    }
    shared.counters.released.fetch_add(1, Ordering::Relaxed);
    tracing::info!(task_id = %job.task_id, "released unfinished task");
}

/// Records ends in two stages, each batching what arrived while it was busy: the first makes
/// ends durable (the claims ended), the second sends the reports and acknowledges the messages.
/// The durable write of a task's end never waits behind another batch's reports and
/// acknowledgements, so the window in which a crash makes a finished task run again is as short
/// as the claim writes allow.
async fn complete_loop(shared: Arc<Shared>, mut done: mpsc::Receiver<Completion>) {
    // Two batches in hand at most: the first stage waits when the second falls behind.
    let (recorded_tx, recorded_rx) = mpsc::channel::<Recorded>(2);
    let acknowledger = tokio::spawn(acknowledge_loop(shared.clone(), recorded_rx));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while done.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match end_claims(&shared, std::mem::take(&mut batch)).await {
            Ok(recorded) if recorded.ended.is_empty() => {}
            Ok(recorded) => {
                if recorded_tx.send(recorded).await.is_err() {
                    tracing::error!(
                        "acknowledger is gone; recorded tasks will be re-reported on redelivery"
                    );
                }
            }
            // Unacknowledged messages come back; the redelivery runs or re-reports them.
            Err(e) => {
                tracing::warn!(error = %e, "recording task ends failed; their messages will be redelivered")
            }
        }
    }
    drop(recorded_tx);
    if let Err(e) = acknowledger.await {
        tracing::error!(error = %e, "acknowledger task failed");
    }
}

async fn acknowledge_loop(shared: Arc<Shared>, mut recorded: mpsc::Receiver<Recorded>) {
    while let Some(batch) = recorded.recv().await {
        if let Err(e) = acknowledge(&shared, &batch.ended).await {
            // Ended claims make the redelivery re-report and acknowledge.
            tracing::warn!(error = %e, "acknowledging task ends failed; their messages will be redelivered");
        }
        // The keepers renew the messages' visibility until here; the slots (of workers that
        // free them only once an end is durable, without dedup) are freed here.
        drop(batch);
    }
}

/// Ends made durable, waiting for their reports and acknowledgements.
struct Recorded {
    ended: Vec<(Job, TaskReport)>,
    /// Renew the messages' visibility until they are acknowledged.
    _keepers: Vec<LeaseKeeper>,
    /// Slots freed once the messages are acknowledged (the durable end without dedup).
    _slots: Vec<OwnedSemaphorePermit>,
}

fn report_of(shared: &Shared, c: &Completion) -> Option<TaskReport> {
    let (status, error, output_bytes) = match &c.outcome {
        Outcome::Done { output_bytes } => (TaskStatus::Succeeded, None, *output_bytes),
        Outcome::Failed(reason) => (TaskStatus::Failed, Some(reason.clone()), 0),
        Outcome::RetryAfter { .. } => return None,
    };
    Some(TaskReport {
        task_id: c.job.task_id.clone(),
        session: c.job.delivery.attributes.get(ATTR_SESSION).cloned(),
        kind: c.job.kind.clone(),
        status,
        error,
        duration_ms: c.duration.as_secs_f64() * 1000.0,
        worker_id: shared.config.worker_id.clone(),
        output_bytes,
        attempt: c.job.delivery.receive_count,
    })
}

/// The first stage: schedules retries and makes a batch's ends durable on their claims. A
/// slot that waits for its end to be durable is freed here (with dedup; without it the
/// acknowledgement is the durable end, and the slot goes on to the second stage).
async fn end_claims(shared: &Shared, batch: Vec<Completion>) -> Result<Recorded> {
    let mut ended = Vec::new();
    let mut keepers = Vec::with_capacity(batch.len());
    let mut slots = Vec::new();
    for mut c in batch {
        slots.extend(c.slot.take());
        if let Some(keeper) = c.keeper.take() {
            match keeper.claim_version().await {
                Some(version) => c.job.version = version,
                None => continue, // another worker owns it now and reports it
            }
            // A retry hides its message for the backoff: no renewal may undo that.
            if !matches!(c.outcome, Outcome::RetryAfter { .. }) {
                keepers.push(keeper);
            }
        }
        match report_of(shared, &c) {
            Some(report) => ended.push((c.job, report)),
            None => retry(shared, c).await,
        }
    }
    if shared.config.dedup && !ended.is_empty() {
        ended = write_ended_claims(shared, ended).await?;
        slots.clear();
    }
    Ok(Recorded {
        ended,
        _keepers: keepers,
        _slots: slots,
    })
}

/// Ends the claims of `ended` (compare-and-swap on the versions this worker owns); what is left
/// to report: the ends written, and those of tasks whose id cannot name a claim (they never had
/// one).
async fn write_ended_claims(
    shared: &Shared,
    ended: Vec<(Job, TaskReport)>,
) -> Result<Vec<(Job, TaskReport)>> {
    let (claimed, mut unclaimed): (Vec<_>, Vec<_>) = ended
        .into_iter()
        .partition(|(job, _)| claim_key(&job.task_id).is_ok());
    let ended_ms = crate::claim::now_ms();
    // The sweep's index items first, so no ended claim exists without one (an index item
    // whose claim write then failed is dropped by the sweep).
    let mut writes = claimed
        .iter()
        .map(|(job, _)| {
            let key = crate::sweep::index_key(&job.task_id, ended_ms)?;
            Ok((key, bytes::Bytes::new(), Condition::Always))
        })
        .collect::<Result<Vec<_>>>()?;
    for (job, report) in &claimed {
        let claim = Claim::Ended {
            message_id: job.delivery.message_id.clone(),
            report: report.clone(),
            ended_ms,
        };
        writes.push((
            claim_key(&job.task_id)?,
            claim.encode(),
            Condition::Version(job.version.unwrap_or(0)),
        ));
    }
    let written = persist(shared, "recording task ends", || {
        shared.engine.ledger.put_batch(writes.clone())
    })
    .await?;
    let written = written.into_iter().skip(claimed.len());
    for (end, ok) in claimed.into_iter().zip(written) {
        match ok {
            Some(_) => unclaimed.push(end),
            None => {
                tracing::warn!(task_id = %end.0.task_id, "claim lost before the end was recorded; the new owner reports")
            }
        }
    }
    Ok(unclaimed)
}

/// The second stage: sends the reports of durable ends and acknowledges their messages.
async fn acknowledge(shared: &Shared, ended: &[(Job, TaskReport)]) -> Result<()> {
    let refs: Vec<(&Job, TaskReport)> = ended.iter().map(|(j, r)| (j, r.clone())).collect();
    persist(shared, "sending task reports", || {
        send_reports(shared, &refs)
    })
    .await?;
    let mut by_queue: BTreeMap<&QueueName, Vec<_>> = BTreeMap::new();
    for (job, report) in ended {
        by_queue
            .entry(&job.queue)
            .or_default()
            .push(job.delivery.receipt.clone());
        let counter = match report.status {
            TaskStatus::Succeeded => &shared.counters.succeeded,
            TaskStatus::Failed => {
                tracing::warn!(task_id = %job.task_id, error = report.error.as_deref().unwrap_or(""), "task failed");
                &shared.counters.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    for (queue, receipts) in by_queue {
        for chunk in receipts.chunks(MAX_BATCH) {
            persist(shared, "acknowledging ended tasks", || {
                shared.engine.queue.delete_batch(queue, chunk)
            })
            .await?;
        }
    }
    Ok(())
}

/// Runs `op` until it succeeds, fails for good, or the worker gives its tasks up (the grace
/// period after a shutdown is over). A task's end must outlast an engine that is unavailable
/// for a while (a full disk, a throttled table): dropped, the end would be lost with the claim's
/// lease and the task run a second time (the chaos harness saw it, under a full disk). Each
/// step of recording ends can be repeated: a claim already ended by the first try is left as it
/// is (its redelivery re-sends the report), a report sent twice is stored once, a message
/// deleted twice is deleted.
async fn persist<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    const FIRST: Duration = Duration::from_millis(50);
    let mut pause = FIRST;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && !shared.abandon.is_cancelled() => {
                if pause == FIRST {
                    tracing::warn!(error = %e, "{what} failed; trying again until it works");
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.abandon.cancelled() => return Err(e),
                }
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Sends each report to its task's `reply_to` queue, batched per queue.
async fn send_reports(shared: &Shared, ended: &[(&Job, TaskReport)]) -> Result<()> {
    let mut by_queue: BTreeMap<String, Vec<OutgoingMessage>> = BTreeMap::new();
    for (job, report) in ended {
        let Some(reply_to) = job.delivery.attributes.get(ATTR_REPLY_TO) else {
            continue;
        };
        let body = serde_json::to_vec(report)
            .map_err(|e| nimbus_core::Error::internal("cannot encode report").with_source(e))?;
        let mut message =
            OutgoingMessage::new(body).attribute(ATTR_TASK_ID, report.task_id.clone());
        if let Some(session) = &report.session {
            message = message.attribute(ATTR_SESSION, session.clone());
        }
        by_queue.entry(reply_to.clone()).or_default().push(message);
    }
    for (queue, messages) in by_queue {
        let name = match QueueName::new(queue.as_str()) {
            Ok(name) => name,
            Err(e) => {
                dropped_if_refused(Err(e), &queue, messages.len())?;
                continue;
            }
        };
        match send_all(shared, &name, &messages).await {
            // One report the queue refuses (too large for it, say) must not take the others
            // with it: send them one by one.
            Err(e) if e.kind() == ErrorKind::InvalidInput && messages.len() > 1 => {
                for message in &messages {
                    let sent = send_all(shared, &name, std::slice::from_ref(message)).await;
                    dropped_if_refused(sent, &queue, 1)?;
                }
            }
            sent => dropped_if_refused(sent, &queue, messages.len())?,
        }
    }
    Ok(())
}

/// A reply queue that does not exist (or cannot), or that refuses a report, is the submitter's
/// mistake: those reports are dropped with a warning and the tasks still end.
fn dropped_if_refused(sent: Result<()>, queue: &str, reports: usize) -> Result<()> {
    match sent {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidInput) => {
            tracing::warn!(reply_to = %queue, reports, error = %e, "reports dropped: refused by the reply queue");
            Ok(())
        }
        other => other,
    }
}

async fn send_all(shared: &Shared, queue: &QueueName, messages: &[OutgoingMessage]) -> Result<()> {
    for chunk in messages.chunks(MAX_BATCH) {
        shared
            .engine
            .queue
            .send_batch(queue, chunk.to_vec())
            .await?;
    }
    Ok(())
}

/// Leaves the claim waiting for the task's next run with `tries` (compare-and-swap on the
/// version this worker owns).
async fn release_claim(shared: &Shared, job: &Job, tries: Tries) {
    let (Some(version), Ok(key)) = (job.version, claim_key(&job.task_id)) else {
        return;
    };
    let waiting = Claim::Waiting { tries };
    if let Err(e) = shared
        .engine
        .ledger
        .put(&key, waiting.encode(), Condition::Version(version))
        .await
    {
        tracing::warn!(task_id = %job.task_id, error = %e, "could not release the claim; it expires with its lease");
    }
}

/// Gives a task back for a retry: the claim counts the retry and the message is hidden for
/// the backoff, which doubles with each retry (not with each receive: a delivery that found
/// the task busy elsewhere, or died beside another task, is no retry).
async fn retry(shared: &Shared, c: Completion) {
    let Outcome::RetryAfter { delay, reason } = &c.outcome else {
        return;
    };
    // The claim counts retries when there is one; without dedup the receive count stands in.
    let retries = if c.job.version.is_some() {
        c.job.tries.retries
    } else {
        c.job.delivery.receive_count.saturating_sub(1)
    };
    let backoff = delay
        .saturating_mul(1 << retries.min(20))
        .min(MAX_VISIBILITY_TIMEOUT);
    tracing::info!(task_id = %c.job.task_id, reason, ?backoff, retries, "task will be retried");
    let tries = Tries {
        retries: retries + 1,
        ..c.job.tries
    };
    release_claim(shared, &c.job, tries).await;
    if let Err(e) = hide(shared, &c.job, backoff).await {
        tracing::warn!(task_id = %c.job.task_id, error = %e, "could not schedule the retry; the message returns after its timeout");
    }
    shared.counters.retried.fetch_add(1, Ordering::Relaxed);
}

//! `nimbus bench chaos`: a harness that tries hard to break the promise of at-least-once
//! delivery with effects exactly once, as Jepsen tries databases. It starts `nimbus web` and N
//! `nimbus worker` processes, drives a mixed workload ([`workload`]), and at random moments
//! (from a printed seed, so a run replays) kills a worker, the web tier or every process with
//! -9, pauses a worker past its lease, or fills the disk under the engine; then restarts what it
//! broke. At the end ([`verdict`]) every accepted piece of work must have ended as planned.

pub mod disk;
pub mod effects;
pub mod fleet;
pub mod verdict;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_core::{DeadLetter, Engine, ErrorKind, QueueName, QueueOptions};
use nimbus_workloads::jobs::JobStore;
use tokio_util::sync::CancellationToken;

use effects::Effects;
use fleet::{Fleet, FleetSpec};
use verdict::{Check, Tally};
use workload::{Driver, Plan, Rates};

/// Why a chaos run could not be carried out (a run that found a broken promise is a report
/// whose checks failed, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The engine failed outside a fault.
    #[error(transparent)]
    Engine(#[from] nimbus_core::Error),
    /// A process or file could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The platform never became ready.
    #[error("{0}")]
    Setup(String),
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Fault {
    /// kill -9 of one worker's process group, restarted after a moment.
    KillWorker,
    /// SIGSTOP of one worker's group past its lease, then SIGCONT.
    PauseWorker,
    /// kill -9 of the web tier, restarted after a moment.
    KillWeb,
    /// kill -9 of every process, all restarted after a moment.
    KillAll,
    /// The engine's filesystem filled to the last byte for a moment.
    DiskFull,
}

impl Fault {
    /// Each kind and how often it is drawn, relative to the others.
    const WEIGHTS: [(Self, u32); 5] = [
        (Self::KillWorker, 35),
        (Self::PauseWorker, 20),
        (Self::KillWeb, 15),
        (Self::KillAll, 10),
        (Self::DiskFull, 20),
    ];

    /// The kinds a run can inject.
    fn enabled(disk: bool) -> Vec<(Self, u32)> {
        Self::WEIGHTS
            .into_iter()
            .filter(|(k, _)| disk || *k != Self::DiskFull)
            .collect()
    }

    fn draw(rng: &mut fastrand::Rng, disk: bool) -> Self {
        let kinds = Self::enabled(disk);
        let mut pick = rng.u32(0..kinds.iter().map(|(_, w)| w).sum());
        for (kind, weight) in &kinds {
            if pick < *weight {
                return *kind;
            }
            pick -= weight;
        }
        Self::KillWorker
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The seed of every random choice (faults, their moments, the workload).
    pub seed: u64,
    /// How long faults are injected; the drain comes after.
    pub duration: Duration,
    /// Worker processes.
    pub workers: usize,
    /// Slots per worker.
    pub concurrency: usize,
    /// The workers' lease.
    pub visibility: Duration,
    /// Mean time between faults.
    pub fault_every: Duration,
    /// The work offered.
    pub rates: Rates,
    /// Poison tasks (each kills its worker on every receive until dead-lettered).
    pub poison: usize,
    /// Receives before a task is dead-lettered.
    pub max_receives: u32,
    /// How close to a disturbance of its worker an effect must be to count as inside the
    /// documented window.
    pub window: Duration,
    /// How long the accepted work may take to finish once the faults stop.
    pub drain: Duration,
}

/// Where a run happens.
pub struct Setup {
    /// The `nimbus` executable.
    pub exe: PathBuf,
    /// `--engine ...` (and `--blobs ...`) for every process.
    pub engine_args: Vec<String>,
    /// The same engine, opened here.
    pub engine: Engine,
    /// The run's directory: logs, the effects pipe.
    pub dir: PathBuf,
    /// The filesystem under the engine to fill (none: no disk-full faults).
    pub disk: Option<PathBuf>,
    /// Further worker arguments (the image model).
    pub worker_args: Vec<String>,
    /// Images to classify (none: no classify requests).
    pub images: Vec<(String, Bytes)>,
}

/// Memory of one member over the run: its longest-lived incarnation's first, peak and last
/// resident size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Memory {
    /// The member.
    pub role: String,
    /// The incarnation measured.
    pub incarnation: String,
    /// Seconds it was sampled over.
    pub span_s: f64,
    /// KiB at its first sample.
    pub first_kib: u64,
    /// The most KiB.
    pub peak_kib: u64,
    /// KiB at its last sample.
    pub last_kib: u64,
}

/// What a run did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The seed: the same seed, the same faults and workload.
    pub seed: u64,
    /// The CPU.
    pub cpu: String,
    /// Seconds of faults.
    pub seconds: f64,
    /// Seconds of draining after them.
    pub drain_seconds: f64,
    /// Worker processes.
    pub workers: usize,
    /// Tasks accepted.
    pub tasks: usize,
    /// Atoms jobs accepted.
    pub atoms_jobs: usize,
    /// Classify jobs accepted.
    pub classify_jobs: usize,
    /// Work refused, by kind.
    pub refused: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Process starts after the first ones.
    pub restarts: u64,
    /// What the verdict counted.
    pub tally: Tally,
    /// Every check.
    pub checks: Vec<Check>,
    /// Memory of each member.
    pub memory: Vec<Memory>,
}

impl Report {
    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Faults of every kind.
    pub fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Tasks run twice inside the window because their worker was killed, per worker killed
    /// (one per worker kill, the workers' count per kill of everything): what
    /// `scripts/bench_window.sh` measures under a burst of instant tasks, here under this run's
    /// mix.
    pub fn doubled_per_kill(&self) -> f64 {
        let kind = |k: &str| self.faults.get(k).copied().unwrap_or(0);
        let kills = kind("KillWorker") + kind("KillAll") * self.workers as u64;
        let hits = self
            .tally
            .window_hits_by
            .get("Killed")
            .copied()
            .unwrap_or(0);
        hits as f64 / kills.max(1) as f64
    }

    /// The human report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "chaos run, seed {} ({}; {} workers): {:.0} s of faults, {:.0} s to drain\n",
            self.seed, self.cpu, self.workers, self.seconds, self.drain_seconds
        );
        out += &format!(
            "  accepted: {} tasks, {} atoms jobs, {} classify jobs; refused: {:?}\n",
            self.tasks, self.atoms_jobs, self.classify_jobs, self.refused
        );
        out += &format!(
            "  faults: {} ({:?}), {} restarts\n",
            self.fault_count(),
            self.faults,
            self.restarts
        );
        out += &format!(
            "  lost {}, dead-lettered {}, doubled {} (outside the window), window hit {} times {:?}, {} effects, {} jobs wrong\n",
            self.tally.lost,
            self.tally.dead_lettered,
            self.tally.doubled,
            self.tally.window_hits,
            self.tally.window_hits_by,
            self.tally.effects,
            self.tally.wrong_jobs
        );
        out += &format!(
            "  run twice inside the window after a kill: {:.2} per worker killed; the most receives of a task that was not poison: {}\n",
            self.doubled_per_kill(),
            self.tally.most_receives
        );
        for c in &self.checks {
            out += &format!(
                "  [{}] {}: {}\n",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            );
        }
        for m in &self.memory {
            out += &format!(
                "  memory {} ({} over {:.0} s): {} MiB first, {} MiB peak, {} MiB last\n",
                m.role,
                m.incarnation,
                m.span_s,
                m.first_kib / 1024,
                m.peak_kib / 1024,
                m.last_kib / 1024
            );
        }
        out
    }

    /// One row of docs/benchmarks.md's long-run table.
    pub fn markdown_row(&self) -> String {
        let kind = |k: &str| self.faults.get(k).copied().unwrap_or(0);
        let memory = |role: &str| {
            self.memory
                .iter()
                .find(|m| m.role == role)
                .map_or("-".to_string(), |m| {
                    format!("{} / {} MiB", m.first_kib / 1024, m.last_kib / 1024)
                })
        };
        format!(
            "| {:.0} min | {} | {} | {} | {} / {} / {} / {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            self.seconds / 60.0,
            self.seed,
            self.tasks,
            self.atoms_jobs + self.classify_jobs,
            kind("KillWorker"),
            kind("PauseWorker"),
            kind("KillWeb"),
            kind("KillAll"),
            kind("DiskFull"),
            self.restarts,
            self.tally.lost,
            self.tally.dead_lettered,
            self.tally.doubled,
            self.tally.window_hits,
            memory("web"),
            memory("worker-0"),
        )
    }
}

fn lock(fleet: &Mutex<Fleet>) -> MutexGuard<'_, Fleet> {
    fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The task queue with its dead-letter queue (kept if it exists with one); every other queue
/// the job kinds use.
async fn prepare_queues(engine: &Engine, max_receives: u32) -> Result<QueueName, ChaosError> {
    let (tasks, _) = workload::queues();
    let dead = QueueName::new(format!("{tasks}-dead"))?;
    if let Ok(options) = engine.queue.queue_options(&tasks).await {
        return options.dead_letter.map(|d| d.queue).ok_or_else(|| {
            ChaosError::Setup(format!(
                "queue `{tasks}` exists without a dead-letter queue; the harness needs one"
            ))
        });
    }
    match engine
        .queue
        .create_queue(&dead, &QueueOptions::default())
        .await
    {
        Err(e) if e.kind() != ErrorKind::Conflict => return Err(e.into()),
        _ => {}
    }
    let options = QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: dead.clone(),
            max_receives,
        }),
        ..QueueOptions::default()
    };
    engine.queue.create_queue(&tasks, &options).await?;
    JobStore::new(engine.clone())
        .prepare(&nimbus_workloads::kinds::all_queues())
        .await?;
    Ok(dead)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_healthy(driver: &Driver, within: Duration) -> Result<(), ChaosError> {
    let deadline = Instant::now() + within;
    loop {
        match driver
            .http(http::Method::GET, "/healthz", "text/plain", Bytes::new())
            .await
        {
            Ok((status, _)) if status.is_success() => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(ChaosError::Setup(format!(
                    "the web tier at {} did not answer /healthz within {within:?}",
                    driver.url
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Each image's label from an undisturbed run.
async fn baseline(driver: &Driver) -> Result<BTreeMap<String, String>, ChaosError> {
    let mut labels = BTreeMap::new();
    for (name, bytes) in driver.images.iter() {
        let path = format!("/api/v1/classify?wait=60&name={name}");
        let answer = driver
            .http(
                http::Method::POST,
                &path,
                "application/octet-stream",
                bytes.clone(),
            )
            .await
            .map_err(ChaosError::Setup)?;
        let label = answer
            .1
            .pointer("/images/0/labels/0/label")
            .and_then(|l| l.as_str())
            .ok_or_else(|| {
                ChaosError::Setup(format!(
                    "the undisturbed run could not classify {name}: {answer:?}"
                ))
            })?;
        labels.insert(name.clone(), label.to_string());
    }
    Ok(labels)
}

/// Runs the fleet, the workload and the faults; then drains and judges.
pub async fn run(setup: Setup, options: ChaosOptions) -> Result<Report, ChaosError> {
    let dead_letter = prepare_queues(&setup.engine, options.max_receives).await?;
    let effects = Effects::open(&setup.dir.join("effects.pipe"))?;
    let port = free_port()?;
    // Every queue of the work offered (video jobs are not: they need images served over HTTP).
    let mut queues = vec![
        nimbus_workloads::tasks::TASKS_QUEUE,
        nimbus_workloads::atoms::GENERATE,
        nimbus_workloads::atoms::SOLVE,
    ];
    if !setup.images.is_empty() {
        queues.push(nimbus_workloads::classify::REQUESTS);
    }
    let mut worker_args: Vec<String> = queues
        .into_iter()
        .flat_map(|q| ["--queue".to_string(), q.to_string()])
        .collect();
    worker_args.extend(
        [
            "--concurrency".to_string(),
            options.concurrency.to_string(),
            "--visibility".into(),
            format!("{}ms", options.visibility.as_millis()),
            "--allow-exec".into(),
            ".*".into(),
            "--grace".into(),
            "2s".into(),
            // Should the harness itself be killed, its workers stop too.
            "--exit-with-parent".into(),
        ]
        .into_iter()
        .chain(setup.worker_args.iter().cloned()),
    );
    let fleet = Fleet::start(FleetSpec {
        exe: setup.exe.clone(),
        engine_args: setup.engine_args.clone(),
        port,
        worker_args,
        workers: options.workers,
        logs: setup.dir.clone(),
    })?;
    let fleet = Arc::new(Mutex::new(fleet));
    let driver = Driver::new(
        setup.engine.clone(),
        format!("http://127.0.0.1:{port}"),
        effects.command(),
        setup.images.clone(),
    );
    wait_healthy(&driver, Duration::from_secs(60)).await?;
    let baseline = baseline(&driver).await?;
    tracing::info!(seed = options.seed, "chaos begins");

    let stop_offering = CancellationToken::new();
    let stop_watching = CancellationToken::new();
    let offer = tokio::spawn({
        let (driver, stop) = (driver.clone(), stop_offering.clone());
        async move {
            driver
                .offer(options.rates, options.seed ^ 0x5eed, stop)
                .await
        }
    });
    let collect = tokio::spawn({
        let (driver, stop) = (driver.clone(), stop_watching.clone());
        async move { driver.collect(stop).await }
    });
    let watch = tokio::spawn(watch(fleet.clone(), stop_watching.clone()));

    let started = Instant::now();
    let faults = inject(&fleet, &driver, &setup, &options).await;
    let seconds = started.elapsed().as_secs_f64();
    stop_offering.cancel();
    let _ = offer.await;
    let drain_started = Instant::now();
    drain(&driver, options.drain).await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    stop_watching.cancel();
    let _ = tokio::join!(collect, watch);
    let mut fleet = match Arc::try_unwrap(fleet) {
        Ok(f) => f
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(_) => return Err(ChaosError::Setup("the fleet is still shared".into())),
    };
    fleet.stop(Duration::from_secs(10));
    sessions_collect_rest(&driver).await;

    let book = driver
        .book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut tally = Tally::default();
    let dead = verdict::dead_letters(&setup.engine, &dead_letter).await?;
    let mut checks = verdict::tasks(
        &setup.engine,
        &book,
        &effects.snapshot(),
        &fleet.disturbances,
        options.window,
        &dead,
        &mut tally,
    )
    .await?;
    checks.extend(verdict::jobs(&setup.engine, &book, &baseline, &mut tally).await?);
    checks.extend(verdict::queues(&setup.engine, &book, &dead).await?);
    checks.push(verdict::deaths(&fleet.deaths));
    write_timeline(
        &setup.dir.join("timeline.tsv"),
        started,
        &effects.snapshot(),
        &fleet.disturbances,
    );
    let samples: String = fleet
        .memory
        .iter()
        .map(|m| {
            format!(
                "{:.1}\t{}\t{}\t{}\n",
                m.at_s, m.role, m.incarnation, m.rss_kib
            )
        })
        .collect();
    if let Err(e) = std::fs::write(setup.dir.join("memory.tsv"), samples) {
        tracing::warn!(error = %e, "cannot write the memory samples");
    }
    Ok(Report {
        seed: options.seed,
        cpu: crate::cpu_model(),
        seconds,
        drain_seconds,
        workers: options.workers,
        tasks: book.batches.iter().map(|b| b.plans.len()).sum(),
        atoms_jobs: book.atoms.len(),
        classify_jobs: book.classify.len(),
        refused: book
            .refused
            .iter()
            .map(|(k, r)| (k.to_string(), r.count))
            .collect(),
        faults: faults
            .into_iter()
            .map(|(k, n)| (format!("{k:?}"), n))
            .collect(),
        restarts: fleet.restarts,
        tally,
        checks,
        memory: memory(&fleet.memory),
    })
}

/// Restarts what ends by itself and samples memory, until `stop`.
async fn watch(fleet: Arc<Mutex<Fleet>>, stop: CancellationToken) {
    let mut tick = 0u64;
    while !stop.is_cancelled() {
        {
            let mut f = lock(&fleet);
            match f.revive() {
                Ok(revived) if !revived.is_empty() => {
                    tracing::info!(?revived, "restarted processes that ended by themselves")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot restart a process"),
            }
            if tick.is_multiple_of(20) {
                f.sample_memory();
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Draws and applies faults until the run's time is up; how many of each.
async fn inject(
    fleet: &Arc<Mutex<Fleet>>,
    driver: &Driver,
    setup: &Setup,
    options: &ChaosOptions,
) -> BTreeMap<Fault, u64> {
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    let mut poison_sent = 0;
    // Every kind once first, in a random order, so that even a short run has each of them.
    let mut first: Vec<Fault> = Fault::enabled(setup.disk.is_some())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    rng.shuffle(&mut first);
    loop {
        let gap = options.fault_every.mul_f64(0.5 + rng.f64());
        let left = options.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(gap.min(left)).await;
        if started.elapsed() >= options.duration {
            return counts;
        }
        // Poison tasks go out at even moments through the run, so that their dead-lettering
        // (every receive kills a worker) overlaps the other faults.
        let due = (started.elapsed().as_secs_f64() / options.duration.as_secs_f64()
            * (options.poison + 1) as f64) as usize;
        if poison_sent < options.poison && due > poison_sent {
            poison_sent += 1;
            driver.submit_tasks(vec![Plan::Poison], &mut rng).await;
        }
        let fault = first
            .pop()
            .unwrap_or_else(|| Fault::draw(&mut rng, setup.disk.is_some()));
        apply(fault, fleet, setup, options, &mut rng).await;
        *counts.entry(fault).or_insert(0) += 1;
    }
}

async fn apply(
    fault: Fault,
    fleet: &Arc<Mutex<Fleet>>,
    setup: &Setup,
    options: &ChaosOptions,
    rng: &mut fastrand::Rng,
) {
    let workers = lock(fleet).workers();
    let victim = rng.usize(workers.clone());
    let down = Duration::from_millis(rng.u64(200..2000));
    tracing::info!(?fault, victim, "fault");
    let restart = |members: &[usize]| {
        let mut f = lock(fleet);
        for &i in members {
            if let Err(e) = f.restart(i) {
                tracing::error!(member = i, error = %e, "cannot restart");
            }
        }
    };
    match fault {
        Fault::KillWorker | Fault::KillWeb => {
            let member = if fault == Fault::KillWeb { 0 } else { victim };
            lock(fleet).kill(member);
            tokio::time::sleep(down).await;
            restart(&[member]);
        }
        Fault::KillAll => {
            let all: Vec<usize> = std::iter::once(0).chain(workers).collect();
            {
                let mut f = lock(fleet);
                for &i in &all {
                    f.kill(i);
                }
            }
            tokio::time::sleep(down).await;
            restart(&all);
        }
        Fault::PauseWorker => {
            if lock(fleet).pause(victim) {
                let past_lease = options.visibility + Duration::from_millis(rng.u64(500..2000));
                tokio::time::sleep(past_lease).await;
                lock(fleet).resume(victim);
            }
        }
        Fault::DiskFull => {
            let Some(dir) = setup.disk.clone() else {
                return;
            };
            let hold = Duration::from_millis(rng.u64(1000..4000));
            let from = Instant::now();
            match tokio::task::spawn_blocking(move || disk::Filler::fill(&dir)).await {
                Ok(Ok(filler)) => {
                    tracing::info!(bytes = filler.bytes, "disk full");
                    tokio::time::sleep(hold).await;
                    filler.release();
                    lock(fleet).record_everyone(fleet::Hit::DiskFull, from);
                }
                Ok(Err(e)) => tracing::error!(error = %e, "cannot fill the disk"),
                Err(e) => tracing::error!(error = %e, "the filler panicked"),
            }
        }
    }
}

/// Waits until the platform is quiet: no message waiting, in flight or delayed on any queue
/// of the job kinds (every task ended or was dead-lettered, every report collected) and every
/// accepted job ended; or until `within` has passed.
async fn drain(driver: &Driver, within: Duration) {
    let deadline = Instant::now() + within;
    let store = JobStore::new(driver.engine.clone());
    while Instant::now() < deadline {
        if quiet(driver, &store).await {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::warn!("the accepted work did not finish within the drain time");
}

async fn quiet(driver: &Driver, store: &JobStore) -> bool {
    for name in nimbus_workloads::kinds::all_queues() {
        let Ok(queue) = QueueName::new(name) else {
            continue;
        };
        match driver.engine.queue.depth(&queue).await {
            Ok(d) if d.visible + d.in_flight + d.delayed == 0 => {}
            _ => return false,
        }
    }
    let book = driver
        .book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for id in book
        .atoms
        .iter()
        .map(|j| &j.id)
        .chain(book.classify.iter().map(|j| &j.id))
    {
        if !store.get(id).await.is_ok_and(|j| j.state.is_terminal()) {
            return false;
        }
    }
    true
}

/// The reports that arrived after the collector stopped.
async fn sessions_collect_rest(driver: &Driver) {
    let (_, reply) = workload::queues();
    if let Err(e) =
        nimbus_workloads::sessions::collect_reports(&driver.engine, &reply, Duration::ZERO).await
    {
        tracing::warn!(error = %e, "collecting the last reports failed");
    }
}

/// Every effect and disturbance, in time order, for reading a failed run: seconds since the
/// faults began, what, who.
fn write_timeline(
    path: &std::path::Path,
    started: Instant,
    effects: &[effects::Effect],
    disturbances: &[fleet::Disturbance],
) {
    let at = |t: Instant| {
        t.checked_duration_since(started).map_or_else(
            || -started.duration_since(t).as_secs_f64(),
            |d| d.as_secs_f64(),
        )
    };
    let mut lines: Vec<(f64, String)> = effects
        .iter()
        .map(|e| (at(e.at), format!("effect\t{}\t{}", e.worker, e.task)))
        .chain(disturbances.iter().map(|d| {
            let to = at(d.to);
            (
                at(d.from),
                format!("{:?}\t{}\tuntil {to:.3}", d.hit, d.incarnation),
            )
        }))
        .collect();
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let text: String = lines
        .iter()
        .map(|(t, l)| format!("{t:.3}\t{l}\n"))
        .collect();
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the timeline");
    }
}

/// Per member, its longest-sampled incarnation's memory.
fn memory(samples: &[fleet::MemorySample]) -> Vec<Memory> {
    let mut by: BTreeMap<(&str, &str), Vec<&fleet::MemorySample>> = BTreeMap::new();
    for s in samples {
        by.entry((s.role.as_str(), s.incarnation.as_str()))
            .or_default()
            .push(s);
    }
    let mut best: BTreeMap<&str, Memory> = BTreeMap::new();
    for ((role, incarnation), s) in by {
        let (Some(first), Some(last)) = (s.first(), s.last()) else {
            continue;
        };
        let m = Memory {
            role: role.to_string(),
            incarnation: incarnation.to_string(),
            span_s: last.at_s - first.at_s,
            first_kib: first.rss_kib,
            peak_kib: s.iter().map(|x| x.rss_kib).max().unwrap_or(0),
            last_kib: last.rss_kib,
        };
        if best.get(role).is_none_or(|b| b.span_s < m.span_s) {
            best.insert(role, m);
        }
    }
    best.into_values().collect()
}

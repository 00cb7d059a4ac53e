//! The worker runtime on the embedded engine: success, duplicates, panics, heartbeats, retries,
//! dead-lettering, shutdown with release, and takeover of a dead owner's task.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::task::{ATTR_KIND, ATTR_REPLY_TO, ATTR_TASK_ID};
use nimbus_core::{
    Condition, DeadLetter, Engine, OutgoingMessage, QueueName, QueueOptions, ReceiveRequest,
    TaskReport, TaskStatus,
};
use nimbus_worker::claim::{claim_key, Claim, Tries};
use nimbus_worker::{
    FreeSlot, Handler, Handlers, Outcome, TaskContext, Worker, WorkerConfig, WorkerStats,
};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Setup {
    engine: Engine,
    work: QueueName,
    replies: QueueName,
    _dir: Arc<tempfile::TempDir>,
}

async fn setup(options: QueueOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let engine = nimbus_sqlite::SqliteEngine::open(dir.path().join("db"), Default::default())
        .unwrap()
        .into_engine(dir.path().join("blobs"))
        .unwrap();
    let work = QueueName::new("work").unwrap();
    let replies = QueueName::new("replies").unwrap();
    if let Some(dl) = &options.dead_letter {
        engine
            .queue
            .create_queue(&dl.queue, &QueueOptions::default())
            .await
            .unwrap();
    }
    engine.queue.create_queue(&work, &options).await.unwrap();
    engine
        .queue
        .create_queue(&replies, &QueueOptions::default())
        .await
        .unwrap();
    Setup {
        engine,
        work,
        replies,
        _dir: Arc::new(dir),
    }
}

fn task(id: &str, kind: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(body.to_string())
        .attribute(ATTR_KIND, kind)
        .attribute(ATTR_TASK_ID, id)
        .attribute(ATTR_REPLY_TO, "replies")
}

fn config(s: &Setup, id: &str) -> WorkerConfig {
    WorkerConfig {
        worker_id: id.into(),
        queues: vec![s.work.clone()],
        concurrency: 8,
        visibility: Duration::from_secs(5),
        poll_wait: Duration::from_millis(100),
        grace: Duration::from_secs(5),
        exit_when_idle: Some(Duration::from_millis(600)),
        ..WorkerConfig::default()
    }
}

/// The work queue holds nothing, visible or in flight.
async fn assert_all_acknowledged(s: &Setup, what: &str) {
    assert_eq!(
        s.engine.queue.depth(&s.work).await.unwrap(),
        Default::default(),
        "{what}"
    );
}

async fn reports(s: &Setup) -> Vec<TaskReport> {
    let mut out = Vec::new();
    loop {
        let got = s
            .engine
            .queue
            .receive(&s.replies, ReceiveRequest::new(1000))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(
            got.iter()
                .map(|d| serde_json::from_slice::<TaskReport>(&d.body).unwrap()),
        );
    }
}

/// Counts runs; sleeps for the millisecond count in the body; panics on "panic"; retries on "retry" until the second delivery.
#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Probe {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let body = String::from_utf8_lossy(&task.delivery.body).into_owned();
        match body.as_str() {
            "panic" => panic!("probe asked to panic"),
            "retry" if task.delivery.receive_count < 2 => Outcome::RetryAfter {
                delay: Duration::from_millis(50),
                reason: "try again".into(),
            },
            "fail-big" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::Failed("z".repeat(300_000))
            }
            "always-retry" => Outcome::RetryAfter {
                delay: Duration::from_millis(10),
                reason: "never works".into(),
            },
            ms => {
                let ms: u64 = ms.parse().unwrap_or(0);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Outcome::Done { output_bytes: 2 },
                    () = task.cancel.cancelled() => Outcome::Failed("cancelled".into()),
                }
            }
        }
    }
}

async fn run_worker(
    s: &Setup,
    id: &str,
    probe: &Probe,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> WorkerStats {
    spawn_worker(
        s,
        id,
        Handlers::default().with("probe", probe.clone()),
        tweak,
    )
    .await
    .unwrap()
}

/// A worker of `s` with `handlers`, run in its own task until it is idle.
fn spawn_worker(
    s: &Setup,
    id: &str,
    handlers: Handlers,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> tokio::task::JoinHandle<WorkerStats> {
    let mut cfg = config(s, id);
    tweak(&mut cfg);
    let worker = Worker::new(s.engine.clone(), handlers, cfg);
    tokio::spawn(async move { worker.run(CancellationToken::new()).await.unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_runs_once_reports_and_is_deleted() {
    let s = setup(QueueOptions::default()).await;
    let batch = (0..200)
        .map(|i| task(&format!("t{i}"), "probe", "0"))
        .collect();
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let probe = Probe::default();
    let stats = run_worker(&s, "w1", &probe, |_| {}).await;
    assert_eq!(stats.succeeded, 200);
    assert_eq!(probe.runs.load(Ordering::SeqCst), 200);
    let reports = reports(&s).await;
    assert_eq!(reports.len(), 200, "one report per task");
    assert!(reports
        .iter()
        .all(|r| r.status == TaskStatus::Succeeded && r.worker_id == "w1" && r.output_bytes == 2));
    assert_all_acknowledged(&s, "every message deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_task_id_submitted_twice_runs_once() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("same", "probe", "0"))
        .await
        .unwrap();
    let probe = Probe::default();
    run_worker(&s, "w1", &probe, |_| {}).await;
    s.engine
        .queue
        .send(&s.work, task("same", "probe", "0"))
        .await
        .unwrap();
    let stats = run_worker(&s, "w2", &probe, |_| {}).await;
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        1,
        "the duplicate did not run"
    );
    assert_eq!(stats.duplicates, 1);
    assert_eq!(
        reports(&s).await.len(),
        1,
        "a duplicate submission is not reported again"
    );
    assert_all_acknowledged(&s, "the duplicate was acknowledged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_task_and_the_worker_goes_on() {
    let s = setup(QueueOptions::default()).await;
    let batch = vec![
        task("boom", "probe", "panic"),
        task("fine", "probe", "0"),
        task("odd", "nope", "0"),
    ];
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let stats = run_worker(&s, "w1", &Probe::default(), |_| {}).await;
    assert_eq!((stats.succeeded, stats.failed), (1, 2));
    let mut reports = reports(&s).await;
    reports.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(reports[0].task_id, "boom");
    assert!(
        reports[0]
            .error
            .as_deref()
            .unwrap()
            .contains("probe asked to panic"),
        "{:?}",
        reports[0].error
    );
    assert_eq!(reports[2].task_id, "odd");
    assert!(reports[2]
        .error
        .as_deref()
        .unwrap()
        .contains("no handler for kind `nope`"));
    assert_all_acknowledged(&s, "failures are acknowledged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_too_long_for_a_claim_fails_alone_and_its_batch_runs() {
    let s = setup(QueueOptions::default()).await;
    let long = "x".repeat(nimbus_worker::claim::MAX_TASK_ID_BYTES + 1);
    let batch = vec![
        task("before", "probe", "0"),
        task(&long, "probe", "0"),
        task("after", "probe", "0"),
    ];
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let probe = Probe::default();
    let stats = run_worker(&s, "w1", &probe, |_| {}).await;
    assert_eq!((stats.succeeded, stats.failed), (2, 1));
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        2,
        "the long id did not run"
    );
    let reports = reports(&s).await;
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| r.status == TaskStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{reports:?}");
    assert_eq!(failed[0].task_id, long);
    let why = failed[0].error.as_deref().unwrap();
    assert!(why.contains("task id is 1020 bytes; at most 1019"), "{why}");
    assert_all_acknowledged(&s, "all three acknowledged").await;
}

/// A report too large for the reply queue (here a failure with a 300 KB reason; a task id of
/// 150 KB does the same) is dropped alone; the reports of the tasks that end beside it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_reply_queue_refuses_does_not_take_the_others_with_it() {
    let s = setup(QueueOptions::default()).await;
    let huge = "y".repeat(150_000);
    let batch = vec![
        task("first", "probe", "50"),
        task("big", "probe", "fail-big"),
        task(&huge, "probe", "0"),
        task("second", "probe", "50"),
    ];
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let stats = run_worker(&s, "w1", &Probe::default(), |_| {}).await;
    assert_eq!((stats.succeeded, stats.failed), (2, 2));
    let mut ids: Vec<_> = reports(&s).await.into_iter().map(|r| r.task_id).collect();
    ids.sort();
    assert_eq!(ids, ["first", "second"]);
    assert_all_acknowledged(&s, "all four acknowledged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_keeps_its_lease_and_no_second_worker_runs_it() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("long", "probe", "5000"))
        .await
        .unwrap();
    let probe = Probe::default();
    // Leases of 2 s for a 5 s task: renewed every second, so a stall of the machine under a
    // second does not end one.
    let short = |c: &mut WorkerConfig| c.visibility = Duration::from_secs(2);
    let (a, b) = tokio::join!(run_worker(&s, "a", &probe, short), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        run_worker(&s, "b", &probe, |c| {
            c.visibility = Duration::from_secs(2);
            c.exit_when_idle = Some(Duration::from_secs(6));
        })
        .await
    });
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        1,
        "the task ran once across two workers for 3 leases"
    );
    assert_eq!(a.succeeded + b.succeeded, 1);
    assert_eq!(
        reports(&s).await[0].attempt,
        1,
        "the first delivery finished it"
    );
}

/// The ledger of `inner` with every write of an ended claim held for `stall` first: a completer
/// that stalls (a slow disk, a paused process) after its handler returned.
struct StallingEnds {
    inner: Arc<dyn nimbus_core::Ledger>,
    stall: Duration,
}

#[async_trait]
impl nimbus_core::Ledger for StallingEnds {
    async fn put(
        &self,
        key: &nimbus_core::ItemKey,
        value: bytes::Bytes,
        condition: Condition,
    ) -> nimbus_core::Result<Option<u64>> {
        self.inner.put(key, value, condition).await
    }
    async fn put_batch(
        &self,
        items: Vec<(nimbus_core::ItemKey, bytes::Bytes, Condition)>,
    ) -> nimbus_core::Result<Vec<Option<u64>>> {
        let ends = items
            .iter()
            .any(|(_, v, _)| matches!(Claim::decode(v), Ok(Claim::Ended { .. })));
        if ends {
            tokio::time::sleep(self.stall).await;
        }
        self.inner.put_batch(items).await
    }
    async fn get(
        &self,
        key: &nimbus_core::ItemKey,
    ) -> nimbus_core::Result<Option<nimbus_core::Item>> {
        self.inner.get(key).await
    }
    async fn delete(
        &self,
        key: &nimbus_core::ItemKey,
        condition: Condition,
    ) -> nimbus_core::Result<bool> {
        self.inner.delete(key, condition).await
    }
    async fn add(&self, key: &nimbus_core::ItemKey, delta: i64) -> nimbus_core::Result<i64> {
        self.inner.add(key, delta).await
    }
    async fn list(&self, partition: &str) -> nimbus_core::Result<Vec<(String, nimbus_core::Item)>> {
        self.inner.list(partition).await
    }
}

/// Regression (issue 16, the heartbeat gap): the lease is renewed until the end is recorded.
/// Before, the heartbeat stopped when the handler returned, and a completer stalled past the
/// lease let a second worker take the finished task over and run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_completer_keeps_the_lease_so_no_second_worker_runs_the_task() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("stalled", "probe", "10"))
        .await
        .unwrap();
    let probe = Probe::default();
    let stalling = s.engine.clone().with_ledger(Arc::new(StallingEnds {
        inner: s.engine.ledger.clone(),
        stall: Duration::from_secs(4),
    }));
    let lease = Duration::from_secs(1);
    let mut first = config(&s, "stalled-completer");
    first.visibility = lease;
    first.exit_when_idle = Some(Duration::from_secs(6));
    let first = Worker::new(
        stalling,
        Handlers::default().with("probe", probe.clone()),
        first,
    );
    let both = async {
        tokio::join!(first.run(CancellationToken::new()), async {
            // The second worker polls the whole time the first one's completer is stalled (four
            // leases long).
            tokio::time::sleep(Duration::from_millis(200)).await;
            run_worker(&s, "second", &probe, |c| {
                c.visibility = lease;
                c.exit_when_idle = Some(Duration::from_secs(6));
            })
            .await
        })
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(90), both)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the workers never went idle: the task kept coming back ({} runs)",
                probe.runs.load(Ordering::SeqCst)
            )
        });
    let a = a.unwrap();
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        1,
        "the finished task ran once"
    );
    assert_eq!((a.succeeded, b.succeeded), (1, 0));
    assert_eq!(reports(&s).await.len(), 1);
    assert_all_acknowledged(&s, "the stalled end was recorded and acknowledged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_brings_the_task_back_and_max_receives_dead_letters() {
    let dlq = QueueName::new("work-dlq").unwrap();
    let s = setup(QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: dlq.clone(),
            max_receives: 3,
        }),
        ..Default::default()
    })
    .await;
    s.engine
        .queue
        .send_batch(
            &s.work,
            vec![
                task("flaky", "probe", "retry"),
                task("broken", "probe", "always-retry"),
            ],
        )
        .await
        .unwrap();
    let probe = Probe::default();
    let stats = run_worker(&s, "w1", &probe, |c| {
        c.exit_when_idle = Some(Duration::from_millis(1500))
    })
    .await;
    assert_eq!(
        stats.succeeded, 1,
        "the flaky task succeeded on its second delivery"
    );
    let reports = reports(&s).await;
    assert_eq!(
        (
            reports.len(),
            reports[0].task_id.as_str(),
            reports[0].attempt
        ),
        (1, "flaky", 2)
    );
    let dead = s
        .engine
        .queue
        .receive(&dlq, ReceiveRequest::new(10))
        .await
        .unwrap();
    assert_eq!(
        dead.len(),
        1,
        "the always-failing task was dead-lettered, not dropped"
    );
    assert_eq!(
        dead[0].attributes.get(ATTR_TASK_ID).map(String::as_str),
        Some("broken")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_releases_unfinished_tasks() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("slow", "probe", "60000"))
        .await
        .unwrap();
    let probe = Probe::default();
    let mut cfg = config(&s, "w1");
    cfg.grace = Duration::from_millis(300);
    cfg.exit_when_idle = None;
    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        s.engine.clone(),
        Handlers::default().with("probe", probe.clone()),
        cfg,
    );
    let run = tokio::spawn(worker.run(shutdown.clone()));
    while probe.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = tokio::time::Instant::now();
    shutdown.cancel();
    let stats = run.await.unwrap().unwrap();
    // Far under the task's 60 s: the grace period (0.3 s), the release, the end of a poll.
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "stopped within the grace period, took {:?}",
        asked.elapsed()
    );
    assert_eq!(stats.released, 1);
    let depth = s.engine.queue.depth(&s.work).await.unwrap();
    assert_eq!(
        depth.visible, 1,
        "the released message is visible at once: {depth:?}"
    );
    let claim = s
        .engine
        .ledger
        .get(&claim_key("slow").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Claim::decode(&claim.value).unwrap(),
        Claim::Waiting {
            tries: Tries::default()
        },
        "and its claim waits for the next delivery, no try counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_owner_died_is_taken_over() {
    let s = setup(QueueOptions::default()).await;
    let id = s
        .engine
        .queue
        .send(&s.work, task("orphan", "probe", "0"))
        .await
        .unwrap();
    let dead_owner = Claim::running("dead-worker", &id, Duration::ZERO, Tries::default());
    s.engine
        .ledger
        .put(
            &claim_key("orphan").unwrap(),
            dead_owner.encode(),
            Condition::Always,
        )
        .await
        .unwrap();
    let probe = Probe::default();
    let stats = run_worker(&s, "w1", &probe, |_| {}).await;
    assert_eq!((stats.succeeded, probe.runs.load(Ordering::SeqCst)), (1, 1));
    let item = s
        .engine
        .ledger
        .get(&claim_key("orphan").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(Claim::decode(&item.value).unwrap(), Claim::Ended { .. }),
        "the claim ended under the new owner"
    );
}

/// A worker that died mid-task, as the chaos harness kills them: it had received the message
/// (leased for the visibility timeout) and written its claim a moment later. The next delivery,
/// once the lease is over, takes the task over at once: the claim ran out before the message
/// came back, so the task is not hidden for the claim's last milliseconds and received again,
/// which would use up a dead-letter queue's receives twice as fast as deaths.
#[tokio::test(start_paused = true)]
async fn a_dead_owners_task_is_taken_over_by_the_next_delivery() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("died-mid-task", "probe", "0"))
        .await
        .unwrap();
    let visibility = config(&s, "w").visibility;
    let got = s
        .engine
        .queue
        .receive(&s.work, ReceiveRequest::new(1).visibility(visibility))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead_owner = Claim::running(
        "dead-worker",
        &got[0].message_id,
        visibility,
        Tries::default(),
    );
    s.engine
        .ledger
        .put(
            &claim_key("died-mid-task").unwrap(),
            dead_owner.encode(),
            Condition::Absent,
        )
        .await
        .unwrap();
    let probe = Probe::default();
    let stats = run_worker(&s, "w1", &probe, |c| {
        c.exit_when_idle = Some(visibility + Duration::from_secs(2));
    })
    .await;
    assert_eq!((stats.succeeded, probe.runs.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(
        reports(&s).await[0].attempt,
        2,
        "taken over on the first delivery after the dead owner's"
    );
}

/// An owner alive but unable to write past its lease (a full disk): its message came back and
/// another worker received it while the claim's lease was over. That worker waits a moment
/// before taking over, and the owner, recording the end within it, keeps the task: it ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_records_its_end_late_keeps_the_task() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("late-end", "probe", "0"))
        .await
        .unwrap();
    let got = s
        .engine
        .queue
        .receive(
            &s.work,
            ReceiveRequest::new(1).visibility(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let message_id = got[0].message_id.clone();
    let key = claim_key("late-end").unwrap();
    let lapsed = Claim::running("slow-owner", &message_id, Duration::ZERO, Tries::default());
    let version = s
        .engine
        .ledger
        .put(&key, lapsed.encode(), Condition::Absent)
        .await
        .unwrap()
        .unwrap();
    s.engine
        .queue
        .change_visibility(&s.work, &got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let probe = Probe::default();
    let worker = {
        let (engine, probe) = (s.engine.clone(), probe.clone());
        let mut cfg = config(&s, "w2");
        cfg.exit_when_idle = Some(Duration::from_secs(2));
        tokio::spawn(async move {
            Worker::new(engine, Handlers::default().with("probe", probe), cfg)
                .run(CancellationToken::new())
                .await
                .unwrap()
        })
    };
    // Once the second worker holds the message, the owner records the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.engine.queue.depth(&s.work).await.unwrap().in_flight == 0
        && probe.runs.load(Ordering::SeqCst) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never received the task"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = TaskReport {
        task_id: "late-end".into(),
        session: None,
        kind: "probe".into(),
        status: TaskStatus::Succeeded,
        error: None,
        duration_ms: 1.0,
        worker_id: "slow-owner".into(),
        output_bytes: 0,
        attempt: 1,
    };
    let ended = Claim::Ended {
        message_id,
        report,
        ended_ms: nimbus_worker::claim::now_ms(),
    };
    let recorded = s
        .engine
        .ledger
        .put(&key, ended.encode(), Condition::Version(version))
        .await
        .unwrap();
    assert!(
        recorded.is_some(),
        "the owner's end was recorded on its own claim"
    );
    let stats = worker.await.unwrap();
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        0,
        "the task did not run again"
    );
    assert_eq!((stats.succeeded, stats.duplicates), (0, 1));
    assert_eq!(
        reports(&s).await.len(),
        1,
        "the owner's report, sent once more"
    );
    assert_all_acknowledged(&s, "the late-end task").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_does_not_starve_a_busy_one() {
    let s = setup(QueueOptions::default()).await;
    let idle = QueueName::new("idle").unwrap();
    s.engine
        .queue
        .create_queue(&idle, &QueueOptions::default())
        .await
        .unwrap();
    let batch = (0..20)
        .map(|i| task(&format!("t{i}"), "probe", "0"))
        .collect();
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let started = tokio::time::Instant::now();
    let stats = run_worker(&s, "w1", &Probe::default(), |c| {
        c.queues = vec![idle.clone(), s.work.clone()];
        c.concurrency = 1;
        c.poll_wait = Duration::from_secs(2);
        c.exit_when_idle = Some(Duration::from_secs(2));
    })
    .await;
    assert_eq!(stats.succeeded, 20);
    // Holding the only slot through each 2 s poll of the idle queue would take 40 s and more;
    // not holding it takes a few polls (and the idle period) however slow the machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// Two queues' receivers of one worker both poll for its free slots; when both polls return
/// at once, the second finds the slots taken by the first. Its messages wait for a slot,
/// leased, instead of going straight back, which spent a receive of each for nothing (the
/// chaos harness saw hundreds a minute on a worker of four queues).
#[tokio::test(start_paused = true)]
async fn a_message_that_finds_every_slot_taken_waits_for_one_instead_of_going_back() {
    let s = setup(QueueOptions::default()).await;
    let other = QueueName::new("other").unwrap();
    s.engine
        .queue
        .create_queue(&other, &QueueOptions::default())
        .await
        .unwrap();
    let worker = spawn_worker(
        &s,
        "w1",
        Handlers::default().with("probe", Probe::default()),
        |c| {
            c.queues = vec![s.work.clone(), other.clone()];
            c.concurrency = 4;
            c.poll_wait = Duration::from_secs(3);
        },
    );
    // Both receivers are in a long poll for 4 messages by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (queue, name) in [(&s.work, "work"), (&other, "other")] {
        let batch = (0..4)
            .map(|i| task(&format!("{name}-{i}"), "probe", "300"))
            .collect();
        s.engine.queue.send_batch(queue, batch).await.unwrap();
    }
    let stats = worker.await.unwrap();
    assert_eq!(stats.succeeded, 8);
    let reports = reports(&s).await;
    assert_eq!(reports.len(), 8);
    for r in &reports {
        assert_eq!(
            r.attempt, 1,
            "{} was received {} times",
            r.task_id, r.attempt
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_reply_queue_does_not_hold_back_the_batch() {
    let s = setup(QueueOptions::default()).await;
    let lost = task("lost", "probe", "0").attribute(ATTR_REPLY_TO, "no-such-queue");
    s.engine
        .queue
        .send_batch(&s.work, vec![lost, task("fine", "probe", "0")])
        .await
        .unwrap();
    let stats = run_worker(&s, "w1", &Probe::default(), |_| {}).await;
    assert_eq!(stats.succeeded, 2, "both tasks end");
    assert_eq!(
        reports(&s).await.len(),
        1,
        "the report with a good reply queue arrives"
    );
    assert_all_acknowledged(&s, "both messages deleted").await;
}

/// Regression (issue 16): ended task claims were kept forever. With a short retention, two
/// workers (sharing the sweeper's lease) bring the ledger back to its size; a duplicate of a
/// task arriving after its claim was swept is a new task and runs again, as designed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_claims_are_swept_after_the_retention_and_the_ledger_returns_to_its_size() {
    use nimbus_worker::sweep::{self, SweepConfig};
    let s = setup(QueueOptions::default()).await;
    let ids: Vec<String> = (0..120).map(|i| format!("swept-{i}")).collect();
    let batch = ids.iter().map(|id| task(id, "probe", "1")).collect();
    s.engine.queue.send_batch(&s.work, batch).await.unwrap();
    let probe = Probe::default();
    let short = SweepConfig {
        retention: Duration::from_secs(1),
        interval: Duration::from_millis(200),
        per_tick: 50,
    };
    let tweak = |c: &mut WorkerConfig| {
        c.sweep = Some(short);
        c.exit_when_idle = Some(Duration::from_secs(4));
    };
    let (a, b) = tokio::join!(
        run_worker(&s, "sweeper-a", &probe, tweak),
        run_worker(&s, "sweeper-b", &probe, tweak)
    );
    assert_eq!(a.succeeded + b.succeeded, 120);
    for id in &ids {
        let claim = s.engine.ledger.get(&claim_key(id).unwrap()).await.unwrap();
        assert!(claim.is_none(), "the claim of {id} is swept");
    }
    let hour = nimbus_worker::claim::now_ms() / sweep::BUCKET_MS;
    for bucket in [hour - 1, hour] {
        let left = s
            .engine
            .ledger
            .list(&format!("claims-ended#{bucket}"))
            .await
            .unwrap();
        assert!(left.is_empty(), "index items left: {left:?}");
    }
    // A sweeper that does not hold the lease does nothing.
    let idle = sweep::sweep_once(&s.engine, "someone-else", &short)
        .await
        .unwrap();
    assert_eq!(idle, sweep::Swept::default());
    // After the retention, a task id is new again.
    let runs = probe.runs.load(Ordering::SeqCst);
    s.engine
        .queue
        .send(&s.work, task("swept-0", "probe", "1"))
        .await
        .unwrap();
    run_worker(&s, "late", &probe, |c| c.sweep = None).await;
    assert_eq!(
        probe.runs.load(Ordering::SeqCst),
        runs + 1,
        "the late duplicate ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_swept_only_once_its_own_end_is_past_the_retention() {
    use nimbus_worker::sweep::{self, SweepConfig};
    let s = setup(QueueOptions::default()).await;
    let config = SweepConfig {
        retention: Duration::from_secs(3600),
        interval: Duration::from_millis(200),
        per_tick: 100,
    };
    // An index item that says "ended 2 hours ago" for a claim that ended just now (a task run
    // again after an earlier end was lost): the claim stays, the stale index item goes.
    let now = nimbus_worker::claim::now_ms();
    let report = TaskReport {
        task_id: "fresh".into(),
        session: None,
        kind: "probe".into(),
        status: TaskStatus::Succeeded,
        error: None,
        duration_ms: 1.0,
        worker_id: "w".into(),
        output_bytes: 0,
        attempt: 1,
    };
    let claim = Claim::Ended {
        message_id: "m".into(),
        report,
        ended_ms: now,
    };
    let key = claim_key("fresh").unwrap();
    s.engine
        .ledger
        .put(&key, claim.encode(), Condition::Absent)
        .await
        .unwrap();
    let stale = sweep::index_key("fresh", now - 2 * 3_600_000).unwrap();
    s.engine
        .ledger
        .put(&stale, bytes::Bytes::new(), Condition::Always)
        .await
        .unwrap();
    // The cursor starts a bucket before what the first sweep can find due: put it at the stale
    // item's bucket, as a sweep running since then would have it.
    let cursor = nimbus_core::ItemKey::new("claims-sweep", "cursor").unwrap();
    let bucket = (now - 2 * 3_600_000) / sweep::BUCKET_MS;
    s.engine
        .ledger
        .put(
            &cursor,
            bytes::Bytes::from(bucket.to_string()),
            Condition::Absent,
        )
        .await
        .unwrap();
    let swept = sweep::sweep_once(&s.engine, "me", &config).await.unwrap();
    assert_eq!((swept.claims, swept.index_items), (0, 1), "{swept:?}");
    assert!(
        s.engine.ledger.get(&key).await.unwrap().is_some(),
        "the fresh end stays"
    );
}

/// When each task ran, by task id: (start, end) of every run that ended, and the ids of the
/// runs begun; the tasks the runtime failed without running them (`abandoned`, with the
/// reason), of which the first `refusals` calls fail.
#[derive(Clone, Default)]
struct Timeline {
    runs: Arc<Mutex<Vec<(String, tokio::time::Instant, tokio::time::Instant)>>>,
    begun: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<Mutex<Vec<(String, String)>>>,
    refusals: Arc<AtomicUsize>,
}

impl Timeline {
    fn of(&self, id: &str) -> Vec<(tokio::time::Instant, tokio::time::Instant)> {
        let runs = self.runs.lock().unwrap();
        runs.iter()
            .filter(|(t, ..)| t == id)
            .map(|(_, a, b)| (*a, *b))
            .collect()
    }

    fn started(&self, id: &str) -> bool {
        self.begun.lock().unwrap().iter().any(|t| t == id)
    }
}

/// Body `MS`: sleeps; `retry:N`: asks for a retry (200 ms) until its N-th run; `hand-back:MS`:
/// makes its own message visible at once, as a lease lost in a stall would, then sleeps.
#[async_trait]
impl Handler for Timeline {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        let start = tokio::time::Instant::now();
        self.begun.lock().unwrap().push(task.task_id.clone());
        let body = String::from_utf8_lossy(&task.delivery.body).into_owned();
        let outcome = if let Some(n) = body.strip_prefix("retry:") {
            if self.of(&task.task_id).len() + 1 < n.parse().unwrap() {
                Outcome::RetryAfter {
                    delay: Duration::from_millis(200),
                    reason: "again".into(),
                }
            } else {
                Outcome::done()
            }
        } else {
            let ms = match body.strip_prefix("hand-back:") {
                Some(ms) => {
                    task.engine
                        .queue
                        .change_visibility(&task.queue, &task.delivery.receipt, Duration::ZERO)
                        .await
                        .unwrap();
                    ms
                }
                None => body.as_str(),
            };
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            Outcome::done()
        };
        let end = tokio::time::Instant::now();
        self.runs
            .lock()
            .unwrap()
            .push((task.task_id.clone(), start, end));
        outcome
    }

    async fn abandoned(&self, task: &TaskContext, reason: &str) -> Result<(), String> {
        let call = (task.task_id.clone(), reason.to_string());
        self.abandoned.lock().unwrap().push(call);
        let refuse = self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err("the job store is busy".into());
        }
        Ok(())
    }
}

fn spawn_timed_worker(
    s: &Setup,
    id: &str,
    timeline: &Timeline,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> tokio::task::JoinHandle<WorkerStats> {
    spawn_worker(
        s,
        id,
        Handlers::default().with("timed", timeline.clone()),
        tweak,
    )
}

/// Sends tasks of the `timed` handler, `(task id, body)`; their message ids.
async fn send_timed(s: &Setup, tasks: &[(&str, &str)]) -> Vec<String> {
    let batch = tasks
        .iter()
        .map(|(id, body)| task(id, "timed", body))
        .collect();
    s.engine.queue.send_batch(&s.work, batch).await.unwrap()
}

/// Sends four instant tasks, `late-0` to `late-3`.
async fn send_late_tasks(s: &Setup) {
    let late = ["late-0", "late-1", "late-2", "late-3"].map(|id| (id, "0"));
    send_timed(s, &late).await;
}

async fn plant_dead_owner(s: &Setup, task_id: &str, message_id: &str, crashes: u32) {
    let tries = Tries {
        retries: 0,
        crashes,
    };
    let dead_owner = Claim::running("dead-worker", message_id, Duration::ZERO, tries);
    s.engine
        .ledger
        .put(
            &claim_key(task_id).unwrap(),
            dead_owner.encode(),
            Condition::Always,
        )
        .await
        .unwrap();
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A task whose worker died under it (here a planted claim of a dead owner) may be what
/// killed it: it runs alone, after the tasks already running end and before any other is
/// received, so that were it to kill this worker too, nothing else would die with it.
#[tokio::test(start_paused = true)]
async fn a_task_taken_over_from_a_dead_owner_runs_alone() {
    let s = setup(QueueOptions::default()).await;
    let ids = send_timed(&s, &[("running", "2500"), ("orphan", "1000")]).await;
    plant_dead_owner(&s, "orphan", &ids[1], 0).await;
    let timeline = Timeline::default();
    let worker = spawn_timed_worker(&s, "w1", &timeline, |_| {});
    wait_for("the orphan's run", || timeline.started("orphan")).await;
    send_late_tasks(&s).await;
    let stats = worker.await.unwrap();
    assert_eq!(stats.succeeded, 6);
    let (running, orphan) = (timeline.of("running")[0], timeline.of("orphan"));
    assert_eq!(orphan.len(), 1, "the orphan ran once");
    assert!(
        orphan[0].0 >= running.1,
        "the orphan waited for the running task to end: started {:?} before",
        running.1 - orphan[0].0
    );
    for i in 0..4 {
        let late = timeline.of(&format!("late-{i}"))[0];
        assert!(
            late.0 >= orphan[0].1,
            "late-{i} was not started while the orphan ran alone"
        );
    }
    let item = s
        .engine
        .ledger
        .get(&claim_key("orphan").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        Claim::decode(&item.value).unwrap(),
        Claim::Ended { .. }
    ));
}

/// While a takeover waits to run alone, its worker receives nothing: a message received then
/// would find no free slot and go back to the queue, one receive spent for nothing, and under
/// dense faults those spent receives dead-lettered tasks that were not poison. Here the worker
/// is in a long poll when two takeovers start waiting; the tasks sent meanwhile must each be
/// received once, after the takeovers ran.
#[tokio::test(start_paused = true)]
async fn no_message_is_received_in_vain_while_takeovers_wait_to_run_alone() {
    let s = setup(QueueOptions::default()).await;
    let tasks = [
        ("running", "2500"),
        ("orphan-a", "300"),
        ("orphan-b", "300"),
    ];
    let ids = send_timed(&s, &tasks).await;
    plant_dead_owner(&s, "orphan-a", &ids[1], 0).await;
    plant_dead_owner(&s, "orphan-b", &ids[2], 0).await;
    let timeline = Timeline::default();
    let worker = spawn_timed_worker(&s, "w1", &timeline, |c| {
        c.batch = 3;
        c.poll_wait = Duration::from_secs(3);
    });
    // Past the takeovers' probe (1 s), before the running task ends (2.5 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send_late_tasks(&s).await;
    let stats = worker.await.unwrap();
    assert_eq!(stats.succeeded, 7);
    let reports = reports(&s).await;
    for r in reports.iter().filter(|r| r.task_id.starts_with("late-")) {
        assert_eq!(
            r.attempt, 1,
            "{} was received {} times",
            r.task_id, r.attempt
        );
    }
    let orphans_end = ["orphan-a", "orphan-b"]
        .iter()
        .map(|id| timeline.of(id)[0].1)
        .max()
        .unwrap();
    for i in 0..4 {
        assert!(
            timeline.of(&format!("late-{i}"))[0].0 >= orphans_end,
            "late-{i} started before both takeovers had run"
        );
    }
}

/// A task whose workers ended under it `max_crashes` times (each time running alone, so it
/// is the likely cause) fails for good, reported with the reason, instead of killing workers
/// until the queue's receive count dead-letters it with whatever shared its worker.
#[tokio::test(start_paused = true)]
async fn a_task_whose_workers_keep_dying_under_it_fails_for_good() {
    let s = setup(QueueOptions::default()).await;
    let id = s
        .engine
        .queue
        .send(&s.work, task("poison", "timed", "0"))
        .await
        .unwrap();
    plant_dead_owner(&s, "poison", &id, 2).await;
    let timeline = Timeline::default();
    timeline.refusals.store(1, Ordering::SeqCst);
    let stats = spawn_timed_worker(&s, "w1", &timeline, |c| {
        c.max_crashes = 3;
        c.exit_when_idle = Some(Duration::from_secs(7));
    })
    .await
    .unwrap();
    assert!(!timeline.started("poison"), "not run a fourth time");
    assert_eq!(stats.failed, 1);
    let told = timeline.abandoned.lock().unwrap().clone();
    assert_eq!(
        told.len(),
        2,
        "the handler is told, and told again after it could not take it: {told:?}"
    );
    assert!(
        told.iter()
            .all(|(t, why)| t == "poison" && why.contains("ended while running it 3 times")),
        "{told:?}"
    );
    let reports = reports(&s).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, TaskStatus::Failed);
    let error = reports[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("its worker ended while running it 3 times"),
        "the report says why: {error}"
    );
    assert_all_acknowledged(&s, "the poison task").await;
}

/// The backoff of a retried task doubles with its retries, counted in its claim, not with its
/// message's receive count: deliveries that found the task busy, or died beside another task,
/// used to make a first retry wait 2^receives times its delay.
#[tokio::test(start_paused = true)]
async fn retry_backoff_doubles_per_retry_not_per_receive() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("flaky", "timed", "retry:3"))
        .await
        .unwrap();
    // Four receives that ran nothing (the receive count is 4 when the worker first sees it).
    for _ in 0..4 {
        let got = s
            .engine
            .queue
            .receive(&s.work, ReceiveRequest::new(1))
            .await
            .unwrap();
        s.engine
            .queue
            .change_visibility(&s.work, &got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    let timeline = Timeline::default();
    let stats = spawn_timed_worker(&s, "w1", &timeline, |c| {
        c.exit_when_idle = Some(Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert_eq!((stats.retried, stats.succeeded), (2, 1));
    let runs = timeline.of("flaky");
    let (first, second) = (runs[1].0 - runs[0].1, runs[2].0 - runs[1].1);
    // On tokio's paused clock (nimbus's clock follows it) a wait is its delay, plus at most
    // one poll of the receiver (100 ms), however loaded the machine.
    let poll = Duration::from_millis(100);
    let waited = |delay: u64, got: Duration| {
        let delay = Duration::from_millis(delay);
        got >= delay && got <= delay + poll
    };
    assert!(
        waited(200, first),
        "the first retry waited its delay (200 ms), not 2^4 times it: {first:?}"
    );
    assert!(
        waited(400, second),
        "the second retry waited twice the delay: {second:?}"
    );
}

/// Every write stalled past the lease (a stopped process holding SQLite's write lock) and the
/// message was delivered to a second worker meanwhile: the owner's claim, still its own, keeps
/// the task (the owner renews it and records the end) and the second delivery waits, then
/// acknowledges. The chaos harness saw the owner give the task up on its stale receipt, and the
/// task run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_message_was_delivered_again_keeps_its_task() {
    let s = setup(QueueOptions::default()).await;
    s.engine
        .queue
        .send(&s.work, task("stalled", "timed", "hand-back:2000"))
        .await
        .unwrap();
    let timeline = Timeline::default();
    let fast = |c: &mut WorkerConfig| {
        c.visibility = Duration::from_secs(1);
        c.exit_when_idle = Some(Duration::from_secs(3));
    };
    let owner = spawn_timed_worker(&s, "owner", &timeline, fast);
    wait_for("the owner's run", || timeline.started("stalled")).await;
    let second = spawn_timed_worker(&s, "second", &timeline, fast);
    let (owner, second) = (owner.await.unwrap(), second.await.unwrap());
    assert_eq!(timeline.begun.lock().unwrap().len(), 1, "the task ran once");
    assert_eq!(owner.succeeded, 1, "the owner ended it");
    // Either worker may have received it again (the owner has free slots too).
    assert_eq!(
        owner.duplicates + second.duplicates,
        1,
        "the second delivery acknowledged it"
    );
    let reports = reports(&s).await;
    assert!(!reports.is_empty() && reports.iter().all(|r| r.task_id == "stalled"));
    assert_all_acknowledged(&s, "the stalled task").await;
}

/// The queue of `inner` with every acknowledgement (delete) held for `stall` first: the second
/// stage of a completer busy with the last batch's reports and acknowledgements.
struct StallingAcks {
    inner: Arc<dyn nimbus_core::Queue>,
    stall: Duration,
}

#[async_trait]
impl nimbus_core::Queue for StallingAcks {
    async fn create_queue(
        &self,
        name: &QueueName,
        options: &QueueOptions,
    ) -> nimbus_core::Result<()> {
        self.inner.create_queue(name, options).await
    }
    async fn delete_queue(&self, name: &QueueName) -> nimbus_core::Result<()> {
        self.inner.delete_queue(name).await
    }
    async fn list_queues(&self) -> nimbus_core::Result<Vec<QueueName>> {
        self.inner.list_queues().await
    }
    async fn queue_options(&self, name: &QueueName) -> nimbus_core::Result<QueueOptions> {
        self.inner.queue_options(name).await
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> nimbus_core::Result<Vec<String>> {
        self.inner.send_batch(queue, messages).await
    }
    async fn receive(
        &self,
        queue: &QueueName,
        request: ReceiveRequest,
    ) -> nimbus_core::Result<Vec<nimbus_core::Delivery>> {
        self.inner.receive(queue, request).await
    }
    async fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &[nimbus_core::Receipt],
    ) -> nimbus_core::Result<()> {
        tokio::time::sleep(self.stall).await;
        self.inner.delete_batch(queue, receipts).await
    }
    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &nimbus_core::Receipt,
        timeout: Duration,
    ) -> nimbus_core::Result<()> {
        self.inner.change_visibility(queue, receipt, timeout).await
    }
    async fn depth(&self, queue: &QueueName) -> nimbus_core::Result<nimbus_core::Depth> {
        self.inner.depth(queue).await
    }
    async fn purge(&self, queue: &QueueName) -> nimbus_core::Result<()> {
        self.inner.purge(queue).await
    }
}

/// Two 10 ms tasks for a worker of one slot on `engine`, freeing slots at `moment`; how long
/// after the first task's end the second one started.
async fn gap_between_two_tasks(s: &Setup, engine: Engine, moment: FreeSlot) -> Duration {
    for id in ["one", "two"] {
        s.engine
            .queue
            .send(&s.work, task(id, "timed", "10"))
            .await
            .unwrap();
    }
    let timeline = Timeline::default();
    let mut cfg = config(s, "one-slot");
    cfg.concurrency = 1;
    cfg.free_slot = moment;
    let worker = Worker::new(
        engine,
        Handlers::default().with("timed", timeline.clone()),
        cfg,
    );
    let stats = worker.run(CancellationToken::new()).await.unwrap();
    assert_eq!(stats.succeeded, 2);
    let mut runs = [timeline.of("one")[0], timeline.of("two")[0]];
    runs.sort();
    runs[1].0 - runs[0].1
}

/// Issue 16, item 8 (the window): with `--free-slot recorded` a slot takes its next task only
/// once its last task's end is durable, so a worker killed at any moment, however long its
/// engine stalled, has at most one finished task per slot whose end is not recorded (each would
/// run again). The default, `finished`, frees the slot when the handler returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_takes_its_next_task_once_its_last_end_is_durable() {
    let stall = Duration::from_millis(1500);
    for (moment, waits) in [(FreeSlot::Recorded, true), (FreeSlot::Finished, false)] {
        let s = setup(QueueOptions::default()).await;
        let stalling = s.engine.clone().with_ledger(Arc::new(StallingEnds {
            inner: s.engine.ledger.clone(),
            stall,
        }));
        let gap = gap_between_two_tasks(&s, stalling, moment).await;
        assert_eq!(
            gap >= stall * 9 / 10,
            waits,
            "slots freed when {moment}: the second task started {gap:?} after the first ended, with ends held {stall:?}"
        );
        assert_all_acknowledged(&s, "both tasks").await;
    }
}

/// Regression (issue 16, item 8: the window): the completer makes a batch's ends durable without
/// waiting for the last batch's reports and acknowledgements. Before, one loop did all three
/// for a batch before it took the next, and an end waited behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_is_durable_while_the_last_batch_is_still_acknowledged() {
    let s = setup(QueueOptions::default()).await;
    let stall = Duration::from_secs(2);
    let stalling = s.engine.clone().with_queue(Arc::new(StallingAcks {
        inner: s.engine.queue.clone(),
        stall,
    }));
    let started = tokio::time::Instant::now();
    let gap = tokio::spawn({
        let s = s.clone();
        async move { gap_between_two_tasks(&s, stalling, FreeSlot::Recorded).await }
    });
    let ended = |id: &str| {
        let ledger = s.engine.ledger.clone();
        let key = claim_key(id).unwrap();
        async move {
            ledger.get(&key).await.unwrap().is_some_and(|item| {
                matches!(Claim::decode(&item.value).unwrap(), Claim::Ended { .. })
            })
        }
    };
    while !(ended("one").await && ended("two").await) {
        assert!(
            started.elapsed() < stall,
            "the second end waited for the first one's acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.engine.queue.depth(&s.work).await.unwrap().in_flight,
        2,
        "both ends were durable before either message was acknowledged"
    );
    let gap = gap.await.unwrap();
    assert!(
        gap < stall,
        "the second task waited {gap:?} for the first one's acknowledgement"
    );
    assert_all_acknowledged(&s, "both tasks").await;
    assert_eq!(reports(&s).await.len(), 2);
}

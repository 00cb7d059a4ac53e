//! Elasticity for real: the local compute provider against the shared compute suite; a burst of
//! 2,000 tasks that grows the fleet of `nimbus worker` processes to its cap, survives a worker
//! killed with -9 (replaced, its tasks finished) and shrinks back after the idle period; 100
//! classify requests through `nimbus up`, whose app tier grows and shrinks the same way; and the
//! autoscaler's decisions carried out as EC2 calls on moto.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Up;
use nimbus_conformance::compute::ComputeHarness;
use nimbus_conformance::compute_suite;
use nimbus_core::{ComputeProvider, Engine, InstanceState, LaunchSpec, QueueName};
use nimbus_scale::policy::{by_name, Tuning};
use nimbus_scale::{Autoscaler, AutoscalerConfig, FleetStatus, LocalProvider};

const NIMBUS: &str = env!("CARGO_BIN_EXE_nimbus");

fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

fn nimbus(db: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(NIMBUS)
        .args(["--engine", &sqlite_url(db)])
        .args(args)
        .current_dir(db.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nimbus {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn open(db: &Path) -> Engine {
    nimbus_sqlite::SqliteEngine::open(db, Default::default())
        .unwrap()
        .into_engine(db.parent().unwrap().join("blobs"))
        .unwrap()
}

fn spec(db: &Path, extra: &[&str]) -> LaunchSpec {
    LaunchSpec {
        engine: sqlite_url(db),
        blobs: None,
        queues: vec!["tasks".to_string()],
        concurrency: 8,
        exit_when_idle: None,
        extra_args: extra.iter().map(ToString::to_string).collect(),
    }
}

async fn local_harness() -> ComputeHarness {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    nimbus(&db, &["queue", "create", "tasks"]);
    ComputeHarness {
        provider: Arc::new(LocalProvider::new(NIMBUS, "suite", Duration::from_secs(15))),
        spec: spec(&db, &["--exit-with-parent"]),
        settle: Duration::from_secs(120),
        guard: Some(Box::new(dir)),
    }
}

compute_suite!(local_harness());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_worker_that_ends_on_its_own_shows_as_stopped_and_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    nimbus(&db, &["queue", "create", "tasks"]);
    let provider = LocalProvider::new(NIMBUS, "own", Duration::from_secs(15));
    let spec = LaunchSpec {
        exit_when_idle: Some(Duration::from_millis(300)),
        ..spec(&db, &[])
    };
    let id = provider.launch(&spec, 1).await.unwrap().remove(0);
    let stopped = wait_for(120, || async {
        provider.list().await.unwrap()[0].state == InstanceState::Stopped
    })
    .await;
    assert!(stopped, "a worker that stopped itself shows as stopped");
    provider.start(std::slice::from_ref(&id)).await.unwrap();
    assert_eq!(
        provider.list().await.unwrap()[0].state,
        InstanceState::Running
    );
    let err = provider.stop(&["nope".to_string()]).await.unwrap_err();
    assert!(
        err.to_string().contains("no local instance `nope`"),
        "{err}"
    );
}

/// Polls `check` every 50 ms for up to `secs` seconds; whether it held.
async fn wait_for<F, Fut>(secs: u64, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn running(status: &FleetStatus) -> u32 {
    status.samples.last().map_or(0, |s| s.running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_tasks_grows_the_fleet_to_its_cap_survives_a_kill_9_and_shrinks_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    nimbus(&db, &["tasks", "gen", "2000", "sleep", "100"]);
    nimbus(&db, &["queue", "create", "tasks"]);
    let engine = open(&db);
    let local = Arc::new(LocalProvider::new(NIMBUS, "burst", Duration::from_secs(15)));
    let tuning = Tuning {
        min: Some(1),
        max: Some(3),
        idle: Some(Duration::from_secs(2)),
        per_instance: Some(8.0),
    };
    let config = AutoscalerConfig {
        queues: vec![QueueName::new("tasks").unwrap()],
        // A short lease, so the killed worker's tasks come back soon.
        spec: spec(&db, &["--exit-with-parent", "--visibility", "3s"]),
        interval: Duration::from_millis(200),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let scaler = Autoscaler::new(
        engine.clone(),
        local.clone(),
        by_name("backlog", &tuning).unwrap(),
        config,
    );
    let looping = tokio::spawn(scaler.run(stop.clone()));
    let status = || async {
        FleetStatus::read(&engine)
            .await
            .unwrap()
            .unwrap_or_default()
    };
    assert!(
        wait_for(120, || async { running(&status().await) == 1 }).await,
        "the warm minimum"
    );

    let session =
        String::from_utf8(nimbus(&db, &["tasks", "submit", "workload.txt"]).stdout).unwrap();
    let session = session.trim().to_string();
    assert!(
        wait_for(120, || async { running(&status().await) == 3 }).await,
        "the fleet grows to its cap: {:?}",
        status().await.decisions
    );
    // Kill one worker, as a machine dies, while most of the burst is still waiting.
    let victim = local.list().await.unwrap()[0].id.clone();
    let pid = local.pid(&victim).unwrap();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_for(120, || async {
            status()
                .await
                .decisions
                .iter()
                .any(|d| d.actions.iter().any(|a| a.starts_with("start")))
        })
        .await,
        "the dead worker is started again: {:?}",
        status().await.decisions
    );
    let check = nimbus(
        &db,
        &["tasks", "check", "--session", &session, "--wait", "300s"],
    );
    let report = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        report.contains("2000 submitted, 2000 reported (2000 succeeded, 0 failed)"),
        "{report}"
    );
    assert!(
        wait_for(120, || async { running(&status().await) == 1 }).await,
        "the fleet shrinks back to its minimum after the idle period: {:?}",
        status().await
    );
    let fleet = status().await;
    assert!(
        fleet.instances.iter().any(|i| i.tasks.is_some()),
        "the workers report their load: {:?}",
        fleet.instances
    );
    assert!(
        fleet.samples.iter().all(|s| s.running + s.pending <= 3),
        "never over the cap"
    );
    assert!(
        fleet
            .decisions
            .iter()
            .any(|d| d.reason.contains("none holds a lease")),
        "{:?}",
        fleet.decisions
    );
    stop.cancel();
    looping.await.unwrap();
    tokio::task::spawn_blocking(move || local.shutdown())
        .await
        .unwrap();
}

#[test]
fn a_hundred_classify_requests_through_nimbus_up_grow_its_app_tier_and_it_shrinks_back() {
    let dir = tempfile::tempdir().unwrap();
    common::photos(dir.path(), common::THREE_PHOTOS);
    // Started from a folder that is not the checkout: the model is found all the same.
    let up = Up::start(
        dir.path(),
        dir.path(),
        &[
            "--max",
            "2",
            "--idle",
            "3s",
            "--interval",
            "300ms",
            "--worker-concurrency",
            "2",
        ],
    );
    let url = up.url.clone();
    let fleet = || common::curl_json(30, &[&format!("{url}/api/v1/fleet")]);
    let bench = common::bench_classify(&url, dir.path(), 100)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&bench.stdout),
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(bench.status.success(), "{report}");
    assert!(
        report.contains("100 requests are sent. 100 responses are correct, 0 wrong, 0 failed."),
        "{report}"
    );
    assert_eq!(
        common::peak_running(&fleet()),
        2,
        "the app tier grew to its cap: {}",
        fleet()["decisions"]
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = fleet();
        let last = f["samples"].as_array().unwrap().last().unwrap()["running"]
            .as_u64()
            .unwrap();
        if last == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tier never shrank back to 1: {f}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_classify_request_that_nothing_would_serve_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        dir.path(),
        &[
            "--model",
            "/nonexistent/model.onnx",
            "--labels",
            "/nonexistent/labels.json",
        ],
    );
    let url = up.url.clone();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-XPOST"])
        .arg(format!("{url}/api/v1/classify"))
        .args([
            "--data-binary",
            "@/usr/lib/python3/dist-packages/skimage/data/chelsea.png",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n503"), "{text}");
    assert!(
        text.contains("image recognition is off on this deployment"),
        "{text}"
    );
    assert!(
        text.contains("/nonexistent/model.onnx"),
        "the reason names the model: {text}"
    );
}

#[cfg(feature = "ec2")]
mod ec2 {
    use super::*;
    use nimbus_aws::ec2::{Ec2Provider, Machine, USER_DATA};
    use nimbus_aws::moto::MotoServer;
    use nimbus_aws::{provision, AwsEngine, S3Location};
    use nimbus_core::{OutgoingMessage, QueueOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_autoscalers_decisions_become_ec2_calls_on_tagged_instances() {
        let moto = MotoServer::start().unwrap();
        let aws = AwsEngine::connect(moto.config("scale-")).await.unwrap();
        let blobs = S3Location::parse("s3://scale").unwrap();
        provision::create_table(aws.clients()).await.unwrap();
        provision::create_bucket(aws.clients(), &blobs)
            .await
            .unwrap();
        let engine = aws.engine(&blobs).unwrap();
        let q = QueueName::new("work").unwrap();
        engine
            .queue
            .create_queue(&q, &QueueOptions::default())
            .await
            .unwrap();
        let machine = Machine {
            image: "ami-03cf127a".to_string(),
            instance_type: "t3.micro".to_string(),
            profile: None,
            user_data: USER_DATA.to_string(),
        };
        let ec2: Arc<dyn ComputeProvider> = Arc::new(Ec2Provider::new(&aws, "scale-", machine));
        let config = AutoscalerConfig {
            queues: vec![q.clone()],
            spec: LaunchSpec {
                engine: "aws://?prefix=scale-".to_string(),
                queues: vec!["work".to_string()],
                concurrency: 1,
                ..LaunchSpec::default()
            },
            interval: Duration::from_millis(100),
        };
        let tuning = |idle_ms| Tuning {
            min: Some(0),
            max: Some(3),
            idle: Some(Duration::from_millis(idle_ms)),
            per_instance: Some(1.0),
        };
        let states = || async {
            let mut s: Vec<_> = ec2
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.state)
                .collect();
            s.sort();
            s
        };
        let mut scaler = Autoscaler::new(
            engine.clone(),
            ec2.clone(),
            by_name("backlog", &tuning(300)).unwrap(),
            config.clone(),
        );
        engine
            .queue
            .send_batch(&q, vec![OutgoingMessage::new("job"); 5])
            .await
            .unwrap();
        let launched = scaler.tick().await.unwrap();
        assert_eq!(
            launched.actions,
            vec![nimbus_scale::Action::Launch(3)],
            "{}",
            launched.reason
        );
        assert_eq!(
            ec2.list().await.unwrap().len(),
            3,
            "RunInstances made 3 tagged instances"
        );

        engine.queue.purge(&q).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !states().await.iter().all(|s| *s == InstanceState::Stopped) {
            assert!(
                Instant::now() < deadline,
                "never stopped: {:?}",
                scaler.status().decisions
            );
            scaler.tick().await;
            tokio::time::sleep(Duration::from_millis(120)).await;
        }

        engine
            .queue
            .send_batch(&q, vec![OutgoingMessage::new("job"); 2])
            .await
            .unwrap();
        let started = scaler.tick().await.unwrap();
        assert!(
            matches!(&started.actions[..], [nimbus_scale::Action::Start(ids)] if ids.len() == 2),
            "stopped instances are started, not new ones launched: {started:?}"
        );
        assert_eq!(
            ec2.list().await.unwrap().len(),
            3,
            "StartInstances reused the stopped ones"
        );

        engine.queue.purge(&q).await.unwrap();
        let mut ender = Autoscaler::new(
            engine.clone(),
            ec2.clone(),
            by_name("seed-001", &tuning(0)).unwrap(),
            config,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            ec2.stop(
                &ec2.list()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| i.id)
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
            ender.tick().await;
            if ec2.list().await.unwrap().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never terminated: {:?}",
                ender.status().decisions
            );
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        assert!(
            ender
                .status()
                .decisions
                .iter()
                .any(|d| d.actions.iter().any(|a| a.starts_with("terminate"))),
            "TerminateInstances ended them: {:?}",
            ender.status().decisions
        );
    }
}

#[test]
fn nimbus_autoscale_runs_the_loop_and_ctrl_c_stops_it_and_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    nimbus(&db, &["queue", "create", "tasks"]);
    let mut scaler = Command::new(NIMBUS)
        .args([
            "--engine",
            &sqlite_url(&db),
            "autoscale",
            "--queue",
            "tasks",
        ])
        .args([
            "--min",
            "1",
            "--max",
            "2",
            "--interval",
            "200ms",
            "--idle",
            "2s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let engine = open(&db);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = || {
        runtime
            .block_on(FleetStatus::read(&engine))
            .unwrap()
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while running(&status()) != 1 {
        assert!(
            Instant::now() < deadline,
            "the warm worker never ran: {:?}",
            status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let worker = status().instances[0].id.clone();
    let workers = || {
        let out = Command::new("pgrep")
            .args(["-f", "--", &format!("worker-id {worker}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(workers(), 1, "its worker process runs");
    common::wait_until_catching(scaler.id(), common::SIGINT);
    assert!(Command::new("kill")
        .args(["-INT", &scaler.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status_code = scaler.wait().unwrap();
    assert!(status_code.success(), "exit status {status_code}");
    assert_eq!(workers(), 0, "Ctrl-C stopped the workers it launched");
}

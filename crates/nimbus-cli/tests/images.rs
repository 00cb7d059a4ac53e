//! The image service as deployed: `nimbus web` and worker processes on one engine file, 100
//! requests from `nimbus bench classify` (the seed's workload generator), and the only worker
//! killed with -9 in the middle before another starts: every answer still comes, all correct.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use common::Killed;
use nimbus_core::{Queue, QueueName};

mod common;
use std::time::{Duration, Instant};

fn nimbus(db: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nimbus"));
    c.arg("--engine")
        .arg(format!("sqlite://{}", db.display()))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    c
}

#[test]
fn a_hundred_requests_are_all_answered_correctly_although_a_worker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    common::photos(
        dir.path(),
        &[
            ("chelsea.png", "cat"),
            ("coffee.png", "espresso"),
            ("rocket.jpg", "missile"),
            ("motorcycle_left.png", "moped"),
            ("camera.png", "tripod"),
        ],
    );
    let mut web = Killed(
        nimbus(&db)
            .args(["web", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = common::printed_url(&mut web.0);
    let worker = |id: &str| {
        Killed(
            nimbus(&db)
                .args([
                    "worker",
                    "--queue",
                    "classify-requests",
                    "--concurrency",
                    "2",
                    "--visibility",
                    "3s",
                    "--worker-id",
                    id,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // The victim works alone at first, so it certainly holds requests when it dies; the survivor
    // starts after, and must also finish what the victim had in flight.
    let mut victim = worker("victim");
    let bench = common::bench_classify(&url, dir.path(), 100)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_in_flight(&db, "classify-requests");
    victim.0.kill().unwrap(); // SIGKILL, in the middle of the run
    victim.0.wait().unwrap();
    let _survivor = worker("survivor");
    let out = bench.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("100 requests are sent. 100 responses are correct, 0 wrong, 0 failed."),
        "{report}"
    );
}

/// Waits until a worker holds messages of `queue` (it has loaded its model and is working).
fn wait_until_in_flight(db: &Path, queue: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = nimbus_sqlite::SqliteEngine::open(db, Default::default()).unwrap();
    let queue = QueueName::new(queue).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(depth) = runtime.block_on(engine.depth(&queue)) {
            if depth.in_flight > 0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no worker ever took a request");
        std::thread::sleep(Duration::from_millis(20));
    }
}

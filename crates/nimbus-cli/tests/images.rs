//! The image service as deployed: `nimbus web` and worker processes on one engine file, 100
//! requests from `nimbus bench classify` (the seed's workload generator), and the only worker
//! killed with -9 in the middle before another starts: every answer still comes, all correct.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::Killed;
use nimbus_core::{Queue, QueueName};

mod common;
use std::time::{Duration, Instant};

const PHOTOS: &str = "/usr/lib/python3/dist-packages/skimage/data";
const EXPECT: &str = "file,words\nchelsea.png,cat\ncoffee.png,espresso\nrocket.jpg,missile\nmotorcycle_left.png,moped\ncamera.png,tripod\n";

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
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for name in [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "camera.png",
    ] {
        std::fs::copy(Path::new(PHOTOS).join(name), images.join(name))
            .expect("python3-skimage sample photos (./scripts/test.sh installs them)");
    }
    std::fs::write(dir.path().join("expect.csv"), EXPECT).unwrap();
    let mut web = Killed(
        nimbus(&db)
            .args(["web", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(web.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().trim_end_matches('/').to_string();
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
    let bench = nimbus(&db)
        .args([
            "bench",
            "classify",
            "--url",
            &url,
            "--requests",
            "100",
            "--concurrency",
            "100",
            // As long as the web tier lets a request wait: a loaded machine answers late.
            "--wait",
            "120",
        ])
        .arg("--images")
        .arg(&images)
        .arg("--expect")
        .arg(dir.path().join("expect.csv"))
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

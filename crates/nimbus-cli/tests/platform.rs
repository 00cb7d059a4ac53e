//! `nimbus up` as a user runs it: the GUI in headless Chromium (form, progress bar to 100 %,
//! result and picture; the image page; the video page and its player; the fleet page's charts), and a kill -9 in the middle of
//! a job after which `nimbus up` finishes it.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Up;

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn curl(args: &[&str]) -> serde_json::Value {
    common::curl_json(10, args)
}

fn output_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tests/browser/SCRIPT URL SHOTS ARGS...` against a fresh `nimbus up`; its output, after
/// checking it succeeded.
fn run_browser_script(script: &str, args: &[String]) -> (String, PathBuf) {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &checkout(), &[]);
    let shots = output_dir("browser");
    let report = common::run_browser(script, &up.url, &shots, args);
    (report, shots)
}

#[test]
fn the_gui_runs_an_atoms_job_in_headless_chromium() {
    let (report, shots) = run_browser_script("atoms.mjs", &[]);
    assert!(report.contains("ok:"), "{report}");
    assert!(
        shots.join("2-result.png").exists(),
        "the screenshot is saved under {}",
        shots.display()
    );
}

#[test]
fn the_image_page_labels_dropped_photos_in_headless_chromium() {
    let photos = ["chelsea.png", "coffee.png", "camera.png"]
        .map(|p| format!("/usr/lib/python3/dist-packages/skimage/data/{p}"));
    let (report, _) = run_browser_script("classify.mjs", &photos);
    for label in ["cat", "espresso", "tripod"] {
        assert!(report.contains(label), "{label} missing: {report}");
    }
}

#[test]
fn the_video_page_makes_a_video_that_plays_in_headless_chromium() {
    let photos = common::THREE_PHOTOS
        .iter()
        .map(|(p, _)| format!("{}/{p}", common::PHOTOS))
        .collect::<Vec<_>>();
    let (report, shots) = run_browser_script("video.mjs", &photos);
    assert!(
        report.contains("ok: bar") && report.contains("video 640x480, 3 s"),
        "{report}"
    );
    println!("{report}");
    assert!(shots.join("video.png").exists());
}

#[test]
fn the_fleet_page_charts_the_app_tier_in_headless_chromium() {
    let (report, shots) = run_browser_script("fleet.mjs", &[]);
    assert!(report.contains("ok: policy backlog"), "{report}");
    assert!(shots.join("fleet.png").exists() && shots.join("queues.png").exists());
}

#[test]
fn a_job_cut_by_kill_9_finishes_after_nimbus_up_restarts() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &checkout(), &[]);
    let job = curl(&[
        "-XPOST",
        &format!("{}/api/v1/jobs", up.url),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"kind":"atoms","params":{"grid_size":128,"atom_count":20000,"seed":3}}"#,
    ]);
    let id = job["id"].as_str().unwrap().to_string();
    let status_url = |up: &Up| format!("{}/api/v1/jobs/{id}", up.url);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let j = curl(&[&status_url(&up)]);
        let done = j["progress"]["done"].as_u64().unwrap();
        // 4e10 atom evaluations: seconds on the fastest CPU path, polled every 50 ms.
        assert_ne!(
            j["state"], "succeeded",
            "the job finished before the kill; make it bigger"
        );
        if done > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(up); // SIGKILL
    let up = Up::start(data.path(), &checkout(), &[]);
    let finished = loop {
        let j = curl(&[&status_url(&up)]);
        if j["state"] == "succeeded" {
            break j;
        }
        assert_ne!(j["state"], "failed", "{j}");
        assert!(
            Instant::now() < deadline,
            "the job did not finish after the restart: {j}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(finished["progress"]["done"], 128 * 128 * 128);
    // The same answer as an uninterrupted run (the f64 reference is checked in nimbus-web's tests).
    let atoms = nimbus_workloads::atoms::generate(20000, 128, 3);
    let whole = nimbus_workloads::atoms::kernel::slab_minimum(&atoms, 128, 0, 128, |_| {}).unwrap();
    assert_eq!(finished["result"]["point"], serde_json::json!(whole.point));
}

#[test]
fn ctrl_c_stops_nimbus_up_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let mut up = Up::start(data.path(), &checkout(), &[]);
    let health = Command::new("curl")
        .args(["-sS", &format!("{}/healthz", up.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    common::wait_until_catching(up.child.id(), common::SIGINT);
    let asked = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &up.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = up.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        asked.elapsed()
    );
}

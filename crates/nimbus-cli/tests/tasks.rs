//! The task framework through the real `nimbus` binary: gen, submit, worker processes, check;
//! a worker killed with -9 in the middle of a batch; a worker stopped by SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nimbus_core::{ItemKey, QueueName};
use nimbus_worker::claim::{claim_key, Claim};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("nimbus.db")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nimbus"));
        c.arg("--engine")
            .arg(format!("sqlite://{}", self.db().display()))
            .args(args)
            .current_dir(self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "nimbus {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A worker process; its visibility timeout is 2 s unless `extra` says otherwise.
    fn worker(&self, extra: &[&str], own_group: bool) -> Child {
        let visibility: &[&str] = if extra.contains(&"--visibility") {
            &[]
        } else {
            &["--visibility", "2s"]
        };
        let mut c = self.cmd(&[&["worker"], visibility, extra].concat());
        c.stdout(Stdio::null()).stderr(Stdio::null());
        if own_group {
            use std::os::unix::process::CommandExt;
            c.process_group(0);
        }
        c.spawn().unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn gen_submit_run_check() {
    let env = Env::new();
    env.run(&["tasks", "gen", "300", "sleep", "1"]);
    let session = stdout(&env.run(&["tasks", "submit", "workload.txt"]));
    env.run(&["worker", "--exit-when-idle", "500ms", "--concurrency", "32"]);
    let check = stdout(&env.run(&["tasks", "check", "--session", &session]));
    assert!(
        check.contains("300 submitted, 300 reported (300 succeeded, 0 failed): all accounted for"),
        "{check}"
    );
    let missing = env
        .cmd(&["tasks", "check", "--session", "nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("session `nope` was never submitted"));
}

fn signal(target: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, "--", target])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {target}");
}

/// Effects per task id, from the file the tasks append to.
fn effects(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some((task, worker)) = line.split_once(' ') {
            by_task
                .entry(task.to_string())
                .or_default()
                .push(worker.to_string());
        }
    }
    by_task
}

/// Whether every effect `worker` produced has its end recorded in the ledger, that is, the
/// worker is not inside the window between a task's effect and its record (see claim.rs).
async fn outside_the_effect_window(
    ledger: &dyn nimbus_core::Ledger,
    effects: &BTreeMap<String, Vec<String>>,
    worker: &str,
) -> bool {
    for (task, workers) in effects {
        if workers.iter().any(|w| w == worker) {
            let key: ItemKey = claim_key(task).unwrap();
            let ended = match ledger.get(&key).await.unwrap() {
                Some(item) => matches!(Claim::decode(&item.value).unwrap(), Claim::Ended { .. }),
                None => false,
            };
            if !ended {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_batch_loses_nothing_and_runs_nothing_twice() {
    let env = Env::new();
    let effects_file = env.dir.path().join("effects.log");
    let task = format!(
        "sleep 0.2; echo \"$NIMBUS_TASK_ID $NIMBUS_WORKER_ID\" >> {}",
        effects_file.display()
    );
    env.run(&["tasks", "gen", "1000", &task]);
    env.run(&["queue", "create", "tasks"]);
    let allow = [
        "--allow-exec",
        r"sleep 0\.2; echo .*",
        "--concurrency",
        "16",
    ];
    // The victim's lease outlasts the pauses below however slow the machine: a lease that ran
    // out while it was stopped would let another worker take a task over and run it again.
    let victim = env.worker(
        &[
            &allow[..],
            &["--worker-id", "victim", "--visibility", "20s"],
        ]
        .concat(),
        true,
    );
    let mut others: Vec<Child> = (1..4)
        .map(|i| {
            env.worker(
                &[&allow[..], &["--worker-id", &format!("w{i}")]].concat(),
                false,
            )
        })
        .collect();
    let session = stdout(&env.run(&["tasks", "submit", "workload.txt"]));

    // Kill the victim and its task processes (as a machine dies) once a quarter of the tasks
    // are done, at a moment it is not between a task's effect and the record of its end: stop
    // the whole process group, look, and kill it or let it go on a little.
    let engine = nimbus_sqlite::SqliteEngine::open(env.db(), Default::default()).unwrap();
    let group = format!("-{}", victim.id());
    let deadline = Instant::now() + Duration::from_secs(300);
    while effects(&effects_file).len() < 250 {
        assert!(Instant::now() < deadline, "tasks are not progressing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = victim;
    loop {
        assert!(
            Instant::now() < deadline,
            "never found the victim outside the effect window"
        );
        signal(&group, "-STOP");
        if outside_the_effect_window(&engine, &effects(&effects_file), "victim").await {
            signal(&group, "-KILL");
            break;
        }
        signal(&group, "-CONT");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    victim.wait().unwrap();
    let victim_done = effects(&effects_file)
        .values()
        .flatten()
        .filter(|w| *w == "victim")
        .count();
    assert!(
        victim_done > 0,
        "the victim had done some tasks before it died"
    );

    let check = env
        .cmd(&["tasks", "check", "--session", &session, "--wait", "300s"])
        .output()
        .unwrap();
    let report = stdout(&check);
    for w in &mut others {
        common::wait_until_catching(w.id(), common::SIGTERM);
        signal(&w.id().to_string(), "-TERM");
        assert!(w.wait().unwrap().success(), "a worker stops cleanly");
    }
    assert!(
        check.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        report.contains("1000 submitted, 1000 reported (1000 succeeded, 0 failed)"),
        "{report}"
    );
    let effects = effects(&effects_file);
    assert_eq!(effects.len(), 1000, "every task had its effect");
    let twice: Vec<_> = effects.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(twice.is_empty(), "tasks executed more than once: {twice:?}");
    let depth = nimbus_core::Queue::depth(&engine, &QueueName::new("tasks").unwrap())
        .await
        .unwrap();
    assert_eq!(depth, Default::default(), "the task queue is empty");
}

#[test]
fn sigterm_stops_a_worker_cleanly() {
    let env = Env::new();
    env.run(&["queue", "create", "tasks"]);
    let mut worker = env.worker(&[], false);
    common::wait_until_catching(worker.id(), common::SIGTERM);
    let asked = Instant::now();
    signal(&worker.id().to_string(), "-TERM");
    let status = worker.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // An idle worker ends its poll (1 s) and has nothing to wait for in its grace period (10 s).
    assert!(
        asked.elapsed() < Duration::from_secs(11),
        "took {:?}",
        asked.elapsed()
    );
}

#[test]
fn bad_worker_arguments_are_named() {
    let env = Env::new();
    let out = env.cmd(&["worker", "--queue", "missing"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot work on queue `missing`"));
    env.run(&["queue", "create", "tasks"]);
    let out = env.cmd(&["worker", "--allow-exec", "("]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid regex"));
    let out = env
        .cmd(&["tasks", "gen", "2", "sleep", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("`x` is not a whole number"));
}

/// Frames of the MP4 at `path`, as ffprobe counts them.
fn frames_of(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe (./scripts/test.sh installs ffmpeg)");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn video_tasks_from_video_gen_run_on_workers_and_are_accounted_for() {
    let env = Env::new();
    let images = common::photos(env.dir.path(), common::THREE_PHOTOS);
    env.run(&[
        "video",
        "gen",
        "4",
        "--images",
        images.to_str().unwrap(),
        "--per-video",
        "2",
        "--frame-seconds",
        "0.2",
        "--width",
        "320",
        "--height",
        "240",
        "-o",
        "good.txt",
    ]);
    // Two videos of an image the worker may not fetch: their tasks fail, saying why.
    std::fs::write(
        env.dir.path().join("urls.txt"),
        "# not on the allow-list\nhttp://127.0.0.1:1/a.png\n",
    )
    .unwrap();
    env.run(&[
        "video",
        "gen",
        "2",
        "--urls",
        "urls.txt",
        "-o",
        "refused.txt",
    ]);
    let good = std::fs::read_to_string(env.dir.path().join("good.txt")).unwrap();
    assert_eq!(good.lines().count(), 4);
    assert!(
        good.lines()
            .all(|l| l.starts_with("video {\"keys\":[\"uploads/video/")),
        "{good}"
    );
    let refused = std::fs::read_to_string(env.dir.path().join("refused.txt")).unwrap();
    std::fs::write(env.dir.path().join("workload.txt"), good + &refused).unwrap();
    let session = stdout(&env.run(&["tasks", "submit", "workload.txt"]));
    env.run(&[
        "worker",
        "--exit-when-idle",
        "1s",
        "--concurrency",
        "2",
        "--allow-fetch",
        "127.0.0.2:9",
    ]);
    let check = stdout(&env.run(&["tasks", "check", "--session", &session]));
    assert!(
        check.contains("6 submitted, 6 reported (4 succeeded, 2 failed): all accounted for"),
        "{check}"
    );
    assert!(
        check.contains("is not on this worker's allow-list"),
        "the failure says why: {check}"
    );
    let mp4 = env
        .dir
        .path()
        .join(format!("blobs/tasks/{session}-1/video.mp4"));
    assert_eq!(frames_of(&mp4), 2, "{}", mp4.display());
    let bad = env
        .cmd(&["video", "gen", "2", "--images", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read --images /nonexistent"));
    let zero = env
        .cmd(&[
            "video",
            "gen",
            "1",
            "--urls",
            "urls.txt",
            "--frame-seconds",
            "0",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&zero.stderr).contains("frame_seconds 0 is outside"));
}

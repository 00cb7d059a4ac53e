//! The platform on the AWS engine, pointed at a moto server: `nimbus aws up|status|down`, and an
//! atoms job and a classify job through `nimbus web` and `nimbus worker` processes.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Killed;
use nimbus_aws::moto::MotoServer;

mod common;

/// A deployment on its own moto server.
struct Deployment {
    moto: MotoServer,
}

impl Deployment {
    fn new() -> Self {
        Self {
            moto: MotoServer::start().expect("moto_server (./scripts/test.sh installs it)"),
        }
    }

    /// `nimbus` with the deployment's engine and blobs, and moto's credentials in the environment
    /// (the standard AWS chain reads them there).
    fn nimbus(&self) -> Command {
        self.nimbus_with_prefix("e2e-")
    }

    /// `nimbus` on the deployment named `prefix` of the same account.
    fn nimbus_with_prefix(&self, prefix: &str) -> Command {
        let mut c = common::nimbus_on_moto(&self.moto.endpoint(), prefix, "s3://e2e-blobs/run1");
        c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.nimbus().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nimbus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Killed {
        Killed(
            self.nimbus()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

fn curl(args: &[&str]) -> serde_json::Value {
    // Longer than a classify request may wait (120 s): moto is slow on a loaded machine.
    common::curl_json(130, args)
}

#[test]
fn aws_up_is_idempotent_status_shows_it_and_down_removes_exactly_it() {
    let d = Deployment::new();
    let first = d.ok(&["aws", "up"]);
    for made in [
        "table   e2e-ledger: created",
        "bucket  s3://e2e-blobs/run1: created",
        "topic   events: created",
        "queue   atoms-solve-dead: created",
        "queue   atoms-solve: created",
        "queue   classify-requests: created",
    ] {
        assert!(
            first.contains(made),
            "`aws up` did not say {made:?}:\n{first}"
        );
    }
    let again = d.ok(&["aws", "up"]);
    assert!(
        !again.contains("created"),
        "a second `aws up` makes nothing:\n{again}"
    );
    assert!(again.contains("queue   tasks: exists"), "{again}");

    // A queue of another deployment in the same account, even one whose prefix extends this
    // one's (`e2e-x-` begins with `e2e-`), is left alone by `status` and `down`.
    let other = |args: &[&str]| {
        let out = d.nimbus_with_prefix("e2e-x-").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    other(&["queue", "create", "keep-me"]);
    d.ok(&["queue", "send", "tasks", "sleep 1"]);

    let status = d.ok(&["aws", "status"]);
    let tasks_line = status
        .lines()
        .find(|l| l.trim_start().starts_with("tasks "))
        .unwrap();
    assert_eq!(
        tasks_line.split_whitespace().collect::<Vec<_>>(),
        ["tasks", "1", "0", "0"],
        "{status}"
    );
    assert!(
        status.contains("ledger table e2e-ledger: 0 items"),
        "{status}"
    );
    assert!(
        !status.contains("keep-me"),
        "status shows only this deployment:\n{status}"
    );

    let down = d.ok(&["aws", "down", "--delete-blobs"]);
    for removed in [
        "topic   events: removed",
        "queue   tasks: removed",
        "table   e2e-ledger: removed",
        "bucket  e2e-blobs: removed",
    ] {
        assert!(
            down.contains(removed),
            "`aws down` did not say {removed:?}:\n{down}"
        );
    }
    assert!(
        other(&["queue", "list"]).contains("keep-me"),
        "another deployment's queue stays"
    );
    assert!(
        !d.ok(&["queue", "list"]).contains("tasks"),
        "this deployment's queues are gone"
    );
    let out = d.run(&["aws", "status"]);
    assert!(
        !out.status.success(),
        "status of a removed deployment fails"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("e2e-ledger"),
        "and names what is missing: {err}"
    );
}

#[test]
fn an_atoms_job_and_a_classify_job_run_through_web_and_worker_processes() {
    let d = Deployment::new();
    d.ok(&["aws", "up"]);
    let mut web = d.spawn(&["web", "--port", "0"]);
    let url = common::printed_url(&mut web.0);
    let _workers: Vec<Killed> = (0..2)
        .map(|i| {
            d.spawn(&[
                "worker",
                "--queue",
                "atoms-generate",
                "--queue",
                "atoms-solve",
                "--queue",
                "classify-requests",
                "--concurrency",
                "2",
                "--worker-id",
                &format!("e2e-{i}"),
            ])
        })
        .collect();

    let job = curl(&[
        "-XPOST",
        &format!("{url}/api/v1/jobs"),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"kind":"atoms","params":{"grid_size":24,"atom_count":300,"seed":5}}"#,
    ]);
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        let j = curl(&[&format!("{url}/api/v1/jobs/{id}")]);
        if j["state"] == "succeeded" {
            break j;
        }
        assert_ne!(j["state"], "failed", "{j}");
        assert!(
            Instant::now() < deadline,
            "the atoms job did not finish: {j}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(finished["progress"]["done"], 24 * 24 * 24);
    let atoms = nimbus_workloads::atoms::generate(300, 24, 5);
    let whole = nimbus_workloads::atoms::kernel::slab_minimum(&atoms, 24, 0, 24, |_| {}).unwrap();
    assert_eq!(finished["result"]["point"], serde_json::json!(whole.point));

    let photo = "/usr/lib/python3/dist-packages/skimage/data/chelsea.png";
    let answer = curl(&[
        "-XPOST",
        &format!("{url}/api/v1/classify?wait=120"),
        "-F",
        &format!("image=@{photo}"),
    ]);
    let labels = answer["images"][0].to_string().to_lowercase();
    assert!(labels.contains("cat"), "chelsea.png is a cat: {answer}");
}

//! Seed 004's hybrid deployment for real on one machine: the web tier in one network namespace
//! (the private cloud), the AWS API server (moto) and the app tier scaled by the `seed-004`
//! policy in another (the public cloud), joined by a veth pair. 100 classify requests sent to
//! the web tier are all answered, by workers the autoscaler started in the other namespace.
//! It needs root (`ip netns`), which the test command has; where it cannot make the namespaces
//! it fails and says why.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Killed;

/// Two namespaces joined by a veth pair, removed when dropped.
struct Clouds {
    private: String,
    public: String,
    /// The public side's address, where moto listens.
    public_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian's iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Clouds {
    fn new() -> Result<Self, String> {
        let n = std::process::id() % 100_000;
        let net = format!("10.231.{}", n % 250);
        let clouds = Self {
            private: format!("nimbus-priv-{n}"),
            public: format!("nimbus-pub-{n}"),
            public_ip: format!("{net}.2"),
        };
        let (a, b) = (format!("nbv{n}a"), format!("nbv{n}b"));
        ip(&["netns", "add", &clouds.private])?;
        ip(&["netns", "add", &clouds.public])?;
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &clouds.private])?;
        ip(&["link", "set", &b, "netns", &clouds.public])?;
        for (ns, dev, addr) in [
            (&clouds.private, &a, format!("{net}.1/24")),
            (&clouds.public, &b, format!("{net}.2/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(clouds)
    }

    /// `program` run inside namespace `ns`.
    fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Clouds {
    fn drop(&mut self) {
        // The veth pair goes with its namespaces.
        let _ = ip(&["netns", "del", &self.private]);
        let _ = ip(&["netns", "del", &self.public]);
    }
}

/// `nimbus` in `ns` on the hybrid deployment's engine (moto in the public cloud).
fn nimbus(ns: &str, engine: &str, args: &[&str]) -> Command {
    let mut c = Clouds::exec(ns, env!("CARGO_BIN_EXE_nimbus"));
    c.args(["--engine", engine, "--blobs", "s3://hybrid-blobs"])
        .args(args);
    c
}

fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_web_tier_in_one_cloud_and_the_app_tier_in_another_answer_100_requests() {
    let clouds = Clouds::new().unwrap_or_else(|e| {
        panic!("the hybrid test needs two network namespaces and cannot make them: {e} (it needs root and iproute2)")
    });
    let port = "45660";
    let _moto = Killed(
        Clouds::exec(&clouds.public, "moto_server")
            .args(["-H", &clouds.public_ip, "-p", port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (./scripts/test.sh installs it)"),
    );
    let endpoint = format!("http://{}:{port}", clouds.public_ip);
    // Reached from the private cloud, across the veth pair.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !Clouds::exec(&clouds.private, "curl")
        .args(["-s", "-o", "/dev/null", &endpoint])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "moto never answered at {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let engine = format!("aws://?region=us-east-1&endpoint={endpoint}&prefix=hybrid-");
    ok(nimbus(&clouds.private, &engine, &["aws", "up"]));

    // The public cloud: the autoscaler and the workers it starts, one more per interval.
    let _tier = Killed(
        nimbus(
            &clouds.public,
            &engine,
            &[
                "autoscale",
                "--queue",
                "classify-requests",
                "--policy",
                "seed-004",
                "--min",
                "0",
                "--max",
                "3",
                "--interval",
                "1s",
                "--worker-concurrency",
                "2",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    // The private cloud: the web tier, and the clients.
    let mut web = Killed(
        nimbus(&clouds.private, &engine, &["web", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = common::printed_url(&mut web.0);

    let dir = tempfile::tempdir().unwrap();
    common::photos(dir.path(), common::THREE_PHOTOS);
    let bench = common::bench_classify(&url, dir.path(), 100);
    let mut in_private = Clouds::exec(&clouds.private, bench.get_program().to_str().unwrap());
    in_private.args(bench.get_args());
    let report = ok(in_private);
    assert!(
        report.contains("100 requests are sent. 100 responses are correct, 0 wrong, 0 failed."),
        "{report}"
    );
    // The web tier shows the fleet the public cloud's autoscaler runs.
    let mut curl = Clouds::exec(&clouds.private, "curl");
    curl.args(["-s", "--max-time", "30", &format!("{url}/api/v1/fleet")]);
    let fleet: serde_json::Value = serde_json::from_str(&ok(curl)).unwrap();
    assert_eq!(fleet["policy"], "seed-004", "{fleet}");
    let peak = common::peak_running(&fleet);
    assert!(
        (1..=3).contains(&peak),
        "workers ran in the public cloud, at most 3: {fleet}"
    );
}

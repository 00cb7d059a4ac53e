//! Seed 003 as a user runs it: `nimbus cluster up` (replicas behind the balancer, path routing,
//! Ctrl-C stops them all), `nimbus bench http` with the seed's scenario and its report in
//! headless Chromium, and `nimbus lb` from a file reloaded on SIGHUP without a failed request.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{printed_url, wait_until_catching, Killed};

/// One GET with `Connection: close`: the status, the replica that answered, the body.
fn http_get(addr: &str, path: &str) -> (u16, Option<String>, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let instance = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-nimbus-instance")
            .then(|| value.trim().to_string())
    });
    (status, instance, body.to_string())
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let child: u32 = name.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn cluster_up_routes_each_cluster_and_the_seed_scenario_is_reported_as_charts() {
    let data = tempfile::tempdir().unwrap();
    let mut cluster = Killed(
        Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args([
                "--engine",
                &format!("sqlite://{}/nimbus.db", data.path().display()),
            ])
            .args([
                "cluster",
                "up",
                "--clusters",
                "2",
                "--replicas",
                "2",
                "--port",
                "0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = printed_url(&mut cluster.0);
    let host = host_of(&url);
    let replicas = children_of(cluster.0.id());
    assert_eq!(replicas.len(), 4, "two clusters of two replicas");

    for cluster_no in [1, 2] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (status, instance, body) = http_get(&host, &format!("/cluster{cluster_no}"));
            assert_eq!(status, 200, "{body}");
            let instance = instance.unwrap();
            assert!(body.contains(&instance), "{body}");
            seen.push(instance);
        }
        seen.sort();
        let a = format!("cluster{cluster_no}-1");
        let b = format!("cluster{cluster_no}-2");
        assert_eq!(
            seen,
            [a.clone(), a, b.clone(), b],
            "round robin within the cluster"
        );
    }
    let (status, _, page) = http_get(&host, "/");
    assert_eq!(status, 200, "other paths reach the web tier: {page}");
    assert!(page.contains("Atom-effect calculator"));
    let (status, _, _) = http_get(&host, "/cluster3");
    assert_eq!(
        status, 404,
        "the web tier's own 404 through the default group"
    );

    // Seed 003's scenario, shortened: per cluster 20 requests, a pause, 30 more.
    let out = tempfile::tempdir().unwrap();
    let bench = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "bench",
            "http",
            &url,
            "--scenario",
            "seed-003",
            "--first",
            "20",
            "--second",
            "30",
        ])
        .args(["--pause", "1s", "--bucket", "1s", "--json", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!(report["requests"], 100);
    assert_eq!(report["errors"], 0);
    for replica in ["cluster1-1", "cluster1-2", "cluster2-1", "cluster2-2"] {
        assert_eq!(
            report["per_target"][replica], 25,
            "{}",
            report["per_target"]
        );
    }
    let buckets = report["buckets"].as_array().unwrap();
    let first_seconds = |path: &str| {
        buckets
            .iter()
            .filter(|b| b["path"] == path)
            .map(|b| b["start_s"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let c1 = first_seconds("/cluster1");
    let spread =
        c1.iter().cloned().fold(0.0, f64::max) - c1.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread >= 1.0, "the pause separates the two phases: {c1:?}");
    for chart in [
        "cluster1-request-count",
        "cluster1-request-count-per-target",
        "cluster2-target-response-time",
    ] {
        let png = std::fs::read(out.path().join(format!("{chart}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{chart}");
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let file_url = format!("file://{}", out.path().join("report.html").display());
    let seen = common::run_browser("report.mjs", &file_url, &shots, &["6".to_string()]);
    assert!(seen.contains("ok: 6 charts"), "{seen}");

    // Ctrl-C stops the balancer and every replica.
    wait_until_catching(cluster.0.id(), 2);
    let _ = Command::new("kill")
        .args(["-INT", &cluster.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "nimbus cluster up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.0.try_wait().unwrap().unwrap().success());
    let left: Vec<u32> = replicas.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "replicas left running: {left:?}");
}

/// A `nimbus web` replica answering `/c` as `id`.
fn replica(engine: &str, id: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "--engine",
            engine,
            "web",
            "--port",
            "0",
            "--cluster-path",
            "/c",
            "--instance-id",
            id,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = printed_url(&mut child);
    (Killed(child), host_of(&url))
}

fn lb_config(targets: &[&str]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[default]\ngroup = \"web\"\n[group.web]\ntargets = [{}]\n[group.web.health]\ninterval = \"200ms\"\n",
        list.join(", ")
    )
}

#[test]
fn lb_reloads_its_file_on_sighup_without_failing_a_request() {
    let data = tempfile::tempdir().unwrap();
    let engine = format!("sqlite://{}/nimbus.db", data.path().display());
    let (_one, one) = replica(&engine, "one");
    let (_two, two) = replica(&engine, "two");
    let file = data.path().join("lb.toml");
    std::fs::write(&file, lb_config(&[&one])).unwrap();
    let mut lb = Killed(
        Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .arg("lb")
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let host = host_of(&printed_url(&mut lb.0));
    wait_until_catching(lb.0.id(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answered = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let (status, instance, body) = http_get(&host, "/c");
                    assert_eq!(status, 200, "a request failed during the reload: {body}");
                    answered.push(instance.unwrap());
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A broken file is refused and the running configuration stays.
    std::fs::write(&file, "[[listener]]\nbind = 5").unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &lb.0.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&file, lb_config(&[&one, &two])).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &lb.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, instance, _) = http_get(&host, "/c");
        if instance.as_deref() == Some("two") {
            break;
        }
        assert!(Instant::now() < deadline, "the added target never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let answered: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(answered.iter().any(|a| a == "one") && answered.iter().any(|a| a == "two"));
    assert!(
        lb.0.try_wait().unwrap().is_none(),
        "the balancer still runs"
    );
}

#[test]
fn lb_flags_that_cannot_work_are_refused_naming_them() {
    let cases: [(&[&str], &str); 4] = [
        (&["lb"], "no target"),
        (&["lb", "--target", "nohost"], "target `nohost`"),
        (
            &["lb", "--target", "127.0.0.1:1", "--balance", "random"],
            "unknown balance `random`",
        ),
        (
            &["lb", "--config", "/nonexistent/lb.toml"],
            "/nonexistent/lb.toml",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    let data = tempfile::tempdir().unwrap();
    let engine = format!("sqlite://{}/nimbus.db", data.path().display());
    for path in ["/fleet", "/api/v1/jobs", "//", "nope"] {
        let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args([
                "--engine",
                &engine,
                "web",
                "--port",
                "0",
                "--cluster-path",
                path,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("--cluster-path `{path}`")),
            "{path}: {stderr}"
        );
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "lb",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--target",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    let _: SocketAddr = taken.local_addr().unwrap();
}

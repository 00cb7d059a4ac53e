//! The engine's command line: a short session of queue, topic and ledger commands, and the
//! one-line errors (with a non-zero exit) for a bad engine URL, a missing queue and malformed
//! arguments.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn nimbus(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .arg("--engine")
        .arg(format!("sqlite://{}/n.db", dir.display()))
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = nimbus(dir, args);
    assert!(
        out.status.success(),
        "nimbus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(dir: &std::path::Path, args: &[&str], says: &str) {
    let out = nimbus(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nimbus {args:?} succeeded");
    assert!(stderr.contains(says), "nimbus {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_session_of_engine_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["queue", "create", "jobs"]);
    ok(
        d,
        &["queue", "send", "jobs", "one", "two", "--attr", "kind=test"],
    );
    let depth = ok(d, &["queue", "depth", "jobs"]);
    assert!(
        depth
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["jobs", "2", "0", "0"],
        "{depth}"
    );
    let got = ok(d, &["queue", "receive", "jobs", "--max", "10"]);
    let first: serde_json::Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["body"].as_str(), first["attributes"]["kind"].as_str()),
        (Some("one"), Some("test"))
    );
    ok(
        d,
        &[
            "queue",
            "delete",
            "jobs",
            first["receipt"].as_str().unwrap(),
        ],
    );
    assert!(
        ok(d, &["queue", "depth", "jobs"]).contains(" 1 "),
        "one left in flight"
    );
    ok(d, &["topic", "create", "events"]);
    ok(d, &["queue", "create", "watch"]);
    ok(
        d,
        &[
            "topic",
            "subscribe",
            "events",
            "watch",
            "--filter",
            "job_id=7",
        ],
    );
    ok(
        d,
        &["topic", "publish", "events", "hello", "--attr", "job_id=7"],
    );
    ok(
        d,
        &[
            "topic",
            "publish",
            "events",
            "not for us",
            "--attr",
            "job_id=8",
        ],
    );
    let got = ok(d, &["queue", "receive", "watch", "--max", "10", "--delete"]);
    assert_eq!(got.lines().count(), 1, "{got}");
    ok(d, &["ledger", "put", "p", "k", "v1", "--if-absent"]);
    fails_with(
        d,
        &["ledger", "put", "p", "k", "v2", "--if-absent"],
        "condition failed",
    );
    assert_eq!(ok(d, &["ledger", "add", "p", "n", "-5"]).trim(), "-5");
    assert!(ok(d, &["ledger", "get", "p", "k"]).contains("\"value\":\"v1\""));
}

#[test]
fn bad_input_gets_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["--engine", "mysql://x", "queue", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: engine url `mysql://x`: unknown engine `mysql`; known: sqlite, aws"
    );
    fails_with(
        d,
        &["queue", "send", "missing", "x"],
        "queue `missing` does not exist",
    );
    fails_with(d, &["queue", "create", "bad name"], "contains ` `");
    fails_with(
        d,
        &["queue", "create", "q", "--visibility-timeout", "13h"],
        "over the limit",
    );
    fails_with(
        d,
        &["queue", "create", "q", "--visibility-timeout", "soon"],
        "not a duration",
    );
    ok(d, &["queue", "create", "q"]);
    fails_with(d, &["queue", "receive", "q", "--wait", "21s"], "wait");
    fails_with(d, &["queue", "receive", "q", "--max", "1001"], "batch");
    fails_with(d, &["queue", "delete", "q", "garbage"], "malformed");
    fails_with(d, &["ledger", "get", "p", "nothing"], "no item p/nothing");
}

#[test]
fn scale_simulate_compares_the_policies_and_draws_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let charts = d.join("charts");
    let out = ok(
        d,
        &[
            "scale",
            "simulate",
            "--burst",
            "50",
            "--charts",
            charts.to_str().unwrap(),
            "--write-traces",
            d.to_str().unwrap(),
        ],
    );
    for policy in [
        "| backlog | 50/50 |",
        "| seed-001 | 50/50 |",
        "| seed-004 | 50/50 |",
    ] {
        assert!(out.contains(policy), "{policy}: {out}");
    }
    let svg = std::fs::read_to_string(charts.join("burst-50.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("seed-001"), "{svg}");
    // The written trace replays to the same table.
    let again = ok(
        d,
        &[
            "scale",
            "simulate",
            "--trace",
            d.join("burst-50.csv").to_str().unwrap(),
        ],
    );
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        out.lines()
            .skip(1)
            .take(again.lines().count() - 1)
            .collect::<Vec<_>>()
    );
    fails_with(
        d,
        &["scale", "simulate", "--policy", "nope"],
        "no policy `nope`; the policies are backlog, seed-001, seed-004",
    );
    fails_with(
        d,
        &["scale", "simulate", "--generate", "x"],
        "no generated trace `x`",
    );
    fails_with(
        d,
        &["scale", "simulate", "--min", "5", "--max", "2"],
        "--min 5 is over --max 2",
    );
    std::fs::write(d.join("bad.csv"), "1,2\n3;4\n").unwrap();
    fails_with(
        d,
        &[
            "scale",
            "simulate",
            "--trace",
            d.join("bad.csv").to_str().unwrap(),
        ],
        "line 2",
    );
    fails_with(
        d,
        &["autoscale", "--queue", "missing"],
        "cannot watch queue `missing`",
    );
    ok(d, &["queue", "create", "q"]);
    fails_with(
        d,
        &["autoscale", "--queue", "q", "--provider", "gce"],
        "no provider `gce`",
    );
    fails_with(
        d,
        &["autoscale", "--queue", "q", "--policy", "magic"],
        "no policy `magic`",
    );
}

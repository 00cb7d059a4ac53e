//! The chaos harness's short profile in the test command: `nimbus bench chaos` on a fresh
//! embedded store (with disk-full faults, as root; the AWS profile is in chaos_aws.rs). Each run
//! prints its seed; `nimbus bench chaos --seed S` with the same flags replays its faults.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use common::chaos::{assert_held, chaos};

mod common;

#[test]
fn a_minute_of_chaos_on_the_embedded_engine_loses_and_doubles_nothing() {
    let report = chaos(
        &mut Command::new(env!("CARGO_BIN_EXE_nimbus")),
        // With one poison task (the default): it kills three workers, alone each time after the
        // first, and is failed for good; nothing that shared its worker is dead-lettered.
        &["--seconds", "60", "--workers", "3"],
    );
    assert_held(&report, 500, 8);
    assert!(report["classify_jobs"].as_u64().unwrap() >= 1, "{report}");
    let kinds = if is_root() { 5 } else { 4 };
    assert_eq!(
        report["faults"].as_object().unwrap().len(),
        kinds,
        "every kind of fault (the disk filled only as root): {report}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

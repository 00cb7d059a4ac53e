//! Running `nimbus bench chaos` from a test and holding its report to the promise.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `nimbus bench chaos --json` with `args`; the report, or a panic with everything printed.
pub fn chaos(command: &mut Command, args: &[&str]) -> Value {
    let out: Output = command
        .args(["bench", "chaos", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the chaos run failed:\n{stdout}\n{stderr}"
    );
    let json = stdout
        .find("\n{")
        .map(|at| &stdout[at + 1..])
        .unwrap_or_else(|| panic!("no report in:\n{stdout}\n{stderr}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// What every run must show: work accepted and faults of several kinds injected, nothing
/// lost, nothing doubled outside the window, every check green.
pub fn assert_held(report: &Value, min_tasks: u64, min_faults: u64) {
    let text = serde_json::to_string_pretty(report).unwrap();
    assert!(report["tasks"].as_u64().unwrap() >= min_tasks, "{text}");
    assert!(report["atoms_jobs"].as_u64().unwrap() >= 1, "{text}");
    let faults = report["faults"].as_object().unwrap();
    assert!(
        faults.values().map(|n| n.as_u64().unwrap()).sum::<u64>() >= min_faults,
        "{text}"
    );
    assert_eq!(report["tally"]["lost"], 0, "{text}");
    assert_eq!(report["tally"]["dead_lettered"], 0, "{text}");
    assert_eq!(report["tally"]["doubled"], 0, "{text}");
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{text}");
    }
}

//! Helpers shared by the binary's integration tests: child processes killed when dropped, curl
//! with a JSON answer, and waiting until a process catches a signal.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs curl with `args`, at most `max_secs` seconds, and parses its JSON answer.
pub fn curl_json(max_secs: u32, args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", &max_secs.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "curl {args:?} gave {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until process `pid` has a handler for signal number `signal` (the kernel's `SigCgt`
/// mask), so a signal sent now is caught rather than killing a process still starting up.
pub fn wait_until_catching(pid: u32, signal: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let bit = 1u64 << (signal - 1);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never set a handler for signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGINT's number.
pub const SIGINT: u32 = 2;
/// SIGTERM's number.
pub const SIGTERM: u32 = 15;

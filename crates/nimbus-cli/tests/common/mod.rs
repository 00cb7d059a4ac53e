//! Helpers shared by the binary's integration tests: child processes killed when dropped, and
//! curl with a JSON answer.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command};

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

//! One supervisor for `nimbus worker` processes on this machine, used by the local compute
//! provider and by the benchmarks: each runs in its own process group, stops gracefully
//! (SIGTERM to the group, so its task processes stop too, then SIGKILL after a grace period) and
//! is reaped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a worker process: the `nimbus` executable, its arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The `nimbus` executable.
    pub exe: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it.
    pub env: Vec<(String, String)>,
    /// Where its standard error goes: a file (appended to), or this process's standard error.
    pub log: Option<PathBuf>,
}

impl ProcessSpec {
    /// `exe` with `args`, no extra environment, no log.
    pub fn new(exe: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            exe: exe.into(),
            args,
            env: Vec::new(),
            log: None,
        }
    }
}

/// A supervised process.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    stop_asked: Option<Instant>,
}

impl Supervised {
    /// Spawns `spec` in a process group of its own.
    pub fn spawn(spec: &ProcessSpec) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let stderr = match &spec.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(&spec.exe)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()?;
        Ok(Self {
            child,
            stop_asked: None,
        })
    }

    /// The process id (and group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (an ended process is reaped here).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether a stop was asked.
    pub fn stop_was_asked(&self) -> bool {
        self.stop_asked.is_some()
    }

    /// Whether a stop was asked and it still runs.
    pub fn stopping(&mut self) -> bool {
        self.stop_asked.is_some() && self.running()
    }

    /// Asks it to stop: SIGTERM to the worker alone, which stops receiving and lets its running
    /// tasks (its shell commands, in its group) finish within its grace period, or gives them
    /// back; the group is killed only if that runs out (see [`Supervised::enforce`]).
    pub fn ask_to_stop(&mut self) {
        if self.stop_asked.is_none() && self.running() {
            if !signal("-TERM", &self.pid().to_string()) {
                let _ = self.child.kill();
            }
            self.stop_asked = Some(Instant::now());
        }
    }

    /// Kills its group if a stop was asked more than `grace` ago and it still runs, and kills
    /// what is left of the group once the worker has ended (a task process that outlived it).
    pub fn enforce(&mut self, grace: Duration) {
        let overdue = self.stop_asked.is_some_and(|t| t.elapsed() >= grace);
        if (overdue && self.running()) || !self.running() {
            self.kill_group();
        }
    }

    fn kill_group(&mut self) {
        if !signal("-KILL", &format!("-{}", self.pid())) && self.running() {
            let _ = self.child.kill();
        }
    }

    /// Asks it to stop, waits until `deadline`, then kills its group; returns once it has
    /// ended.
    pub fn stop_by(&mut self, deadline: Instant) {
        self.ask_to_stop();
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_group();
        let _ = self.child.wait();
    }

    /// [`Supervised::stop_by`] `grace` from now.
    pub fn stop(&mut self, grace: Duration) {
        self.stop_by(Instant::now() + grace);
    }
}

/// Sends `sig` to `target` (a pid, or `-PGID` for a group) with kill(1); whether it was sent.
fn signal(sig: &str, target: &str) -> bool {
    let sent = Command::new("kill")
        .args([sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        tracing::debug!(signal = sig, target, "kill found nothing to signal");
    }
    sent
}

/// Worker processes that are stopped (gracefully, then killed after the grace period) when
/// dropped: what the benchmarks start.
#[derive(Debug)]
pub struct ProcessSet {
    processes: Vec<Supervised>,
    grace: Duration,
}

impl ProcessSet {
    /// Starts `count` processes; `args(i)` gives the i-th one's arguments.
    pub fn start(
        exe: &Path,
        count: usize,
        grace: Duration,
        args: impl Fn(usize) -> Vec<String>,
    ) -> std::io::Result<Self> {
        let processes = (0..count)
            .map(|i| Supervised::spawn(&ProcessSpec::new(exe, args(i))))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { processes, grace })
    }
}

impl Drop for ProcessSet {
    fn drop(&mut self) {
        for p in &mut self.processes {
            p.ask_to_stop();
        }
        let deadline = Instant::now() + self.grace;
        for p in &mut self.processes {
            p.stop_by(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ProcessSpec {
        ProcessSpec::new("sh", vec!["-c".into(), script.into()])
    }

    #[test]
    fn a_stop_ends_the_whole_group_and_a_stubborn_one_is_killed() {
        // The child shell ignores SIGTERM; its `sleep` is in the same group.
        let mut p = Supervised::spawn(&sh("trap '' TERM; sleep 30 & wait")).unwrap();
        assert!(p.running());
        let started = Instant::now();
        p.stop(Duration::from_millis(300));
        assert!(!p.running());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(live_in_group(p.pid()), 0, "nothing of the group is left");
    }

    /// Processes of group `pgid` that are not zombies (a killed child waits for init to reap
    /// it, which a container's init may never do).
    fn live_in_group(pgid: u32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after it.
                let Some((_, rest)) = stat.rsplit_once(") ") else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
            })
            .count()
    }

    #[test]
    fn a_graceful_stop_lets_it_exit_on_its_own() {
        let mut p =
            Supervised::spawn(&sh("trap 'exit 0' TERM; while true; do sleep 0.05; done")).unwrap();
        p.ask_to_stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.running() {
            assert!(Instant::now() < deadline, "it never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!p.stopping());
    }

    #[test]
    fn an_exit_on_its_own_is_seen() {
        let mut p = Supervised::spawn(&sh("exit 3")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.running() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

//! The one home of child processes: a supervisor for `nimbus worker` processes on this machine,
//! used by the local compute provider and by the benchmarks (each runs in its own process group,
//! stops gracefully: SIGTERM, then SIGKILL to the group after a grace period, and is reaped), and
//! [`run`], which runs a command to completion for a handler (shell tasks, ffmpeg) under a time
//! limit and a cancel token, killing its whole process tree whenever it stops early.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

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
            if !signal(self.pid(), Target::Process, Signal::TERM) {
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
        if !signal(self.pid(), Target::Group, Signal::KILL) && self.running() {
            let _ = self.child.kill();
        }
    }

    /// Kills its whole group at once (as a machine dies) and reaps it: what a chaos test does.
    pub fn kill_now(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
    }

    /// Stops its whole group (SIGSTOP), as a long pause of the machine would; [`Supervised::resume`]
    /// lets it go on. Whether the signal was sent.
    pub fn pause(&self) -> bool {
        signal(self.pid(), Target::Group, Signal::STOP)
    }

    /// Lets a paused group go on (SIGCONT).
    pub fn resume(&self) -> bool {
        signal(self.pid(), Target::Group, Signal::CONT)
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

/// What a signal goes to: one process, or the process group it leads.
#[derive(Debug, Clone, Copy)]
enum Target {
    Process,
    Group,
}

/// Sends `sig` to process `pid` or to its group; whether it was sent.
fn signal(pid: u32, target: Target, sig: Signal) -> bool {
    let Some(id) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let sent = match target {
        Target::Process => rustix::process::kill_process(id, sig),
        Target::Group => rustix::process::kill_process_group(id, sig),
    };
    if let Err(e) = &sent {
        tracing::debug!(pid, ?target, error = %e, "nothing to signal");
    }
    sent.is_ok()
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

/// Bounds on a command run to completion by [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// The longest it may run; its whole group is killed then.
    pub timeout: Option<Duration>,
    /// How many bytes of the end of its standard error are kept for the error message.
    pub stderr_tail: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            timeout: None,
            stderr_tail: 4096,
        }
    }
}

/// How a command run by [`run`] ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// How many bytes it wrote to standard output.
    pub stdout_bytes: u64,
    /// The end of its standard error (at most [`RunLimits::stderr_tail`] bytes), trimmed.
    pub stderr: String,
}

impl RunOutput {
    /// `Ok` when it exited with 0; otherwise the status with the end of its standard error.
    pub fn success(self, program: &str) -> Result<Self, RunError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(RunError::Failed {
                program: program.to_string(),
                status: self.status,
                stderr: self.stderr,
            })
        }
    }
}

/// Why a command run by [`run`] did not end well.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started (not found, not executable).
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran past its time limit and was killed with its group.
    #[error(
        "`{program}` ran past its time limit of {limit:?} and was stopped{}",
        quote(stderr)
    )]
    TimedOut {
        /// The program.
        program: String,
        /// The limit.
        limit: Duration,
        /// The end of its standard error.
        stderr: String,
    },
    /// The cancel token fired; it was killed with its group.
    #[error("`{program}` was stopped: cancelled")]
    Cancelled {
        /// The program.
        program: String,
    },
    /// It exited with a status other than 0 (see [`RunOutput::success`]).
    #[error("`{program}` exited with {status}{}", quote(stderr))]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
    /// Waiting for it failed.
    #[error("waiting for `{program}` failed: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

fn quote(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Kills the process tree it names when dropped, unless disarmed: a run that ends early (time
/// limit, cancel, its future dropped) leaves none of its processes behind.
struct TreeGuard(Option<u32>);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_tree(pid);
        }
    }
}

/// Every process's parent, from /proc.
fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after it.
        let ppid = stat
            .rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Stops `root` and every process descended from it (so none forks away while they are found),
/// then kills them all. The tree, not a process group: a task stays in its worker's group, so
/// that stopping or killing the worker's group (a supervisor, a kill -9 of the group) reaches its
/// tasks too.
fn kill_tree(root: u32) {
    signal(root, Target::Process, Signal::STOP);
    let mut tree = vec![root];
    loop {
        let found: Vec<u32> = parents()
            .into_iter()
            .filter(|(pid, ppid)| tree.contains(ppid) && !tree.contains(pid))
            .map(|(pid, _)| pid)
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            signal(pid, Target::Process, Signal::STOP);
            tree.push(pid);
        }
    }
    for pid in tree {
        signal(pid, Target::Process, Signal::KILL);
    }
}

/// The end of `kept` (at most `tail` bytes, on a character boundary), trimmed.
fn tail_of(kept: &[u8], tail: usize) -> String {
    let text = String::from_utf8_lossy(kept);
    let text = text.trim();
    let mut start = text.len().saturating_sub(tail);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// How long the output pipes may stay open after the command exited (a process it left running
/// may hold them) before they are no longer read.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` to its end, with standard input closed; each line it writes to standard output
/// goes to `on_line`. It stays in this process's group (a supervisor that stops or kills this
/// process's group reaches it too); its whole process tree is killed when `limits.timeout` runs
/// out, when `cancel` fires, or when this future is dropped (so a shell's children go too, not
/// the shell alone).
pub async fn run(
    mut command: tokio::process::Command,
    limits: &RunLimits,
    cancel: &tokio_util::sync::CancellationToken,
    mut on_line: impl FnMut(&str),
) -> Result<RunOutput, RunError> {
    use tokio::io::AsyncReadExt;
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let Some(pid) = child.id() else {
        return Err(RunError::Wait {
            program,
            source: std::io::Error::other("the child ended before it could be watched"),
        });
    };
    let mut guard = TreeGuard(Some(pid));
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    // Shared by the readers and this function (never across an await), and readable after a
    // time limit cut the readers short.
    let stdout_bytes = std::sync::atomic::AtomicU64::new(0);
    let kept = std::sync::Mutex::new(Vec::new());
    let tail = limits.stderr_tail;
    let read_stdout = async {
        let (mut line, mut buf) = (Vec::new(), [0u8; 8192]);
        let Some(out) = stdout.as_mut() else { return };
        while let Ok(n @ 1..) = out.read(&mut buf).await {
            stdout_bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                // A line longer than 64 KiB is cut there; the rest still counts as output.
                if line.len() < 64 * 1024 {
                    line.extend_from_slice(chunk);
                }
                if chunk.ends_with(b"\n") {
                    on_line(String::from_utf8_lossy(&line).trim_end());
                    line.clear();
                }
            }
        }
    };
    let read_stderr = async {
        let mut buf = [0u8; 4096];
        let Some(err) = stderr.as_mut() else { return };
        while let Ok(n @ 1..) = err.read(&mut buf).await {
            let mut kept = kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            kept.extend_from_slice(&buf[..n]);
            // Twice the tail is kept while reading, so trailing blank lines do not eat it.
            if kept.len() > 4 * tail {
                let excess = kept.len() - 2 * tail;
                kept.drain(..excess);
            }
        }
    };
    let finished = async {
        let mut reading = std::pin::pin!(async { tokio::join!(read_stdout, read_stderr) });
        let mut read_all = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                ((), ()) = &mut reading, if !read_all => read_all = true,
            }
        };
        if !read_all {
            let _ = tokio::time::timeout(PIPE_GRACE, reading).await;
        }
        status
    };
    let limit = limits.timeout.unwrap_or(Duration::MAX);
    let ended = tokio::select! {
        ended = tokio::time::timeout(limit, finished) => ended,
        () = cancel.cancelled() => return Err(RunError::Cancelled { program }),
    };
    let stderr = tail_of(
        &kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        tail,
    );
    let Ok(status) = ended else {
        return Err(RunError::TimedOut {
            program,
            limit,
            stderr,
        });
    };
    // Reaped: its pid may be reused from now on, so the guard must not signal it.
    guard.0 = None;
    let status = status.map_err(|source| RunError::Wait {
        program: program.clone(),
        source,
    })?;
    Ok(RunOutput {
        status,
        stdout_bytes: stdout_bytes.into_inner(),
        stderr,
    })
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

    fn sh_command(script: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[tokio::test]
    async fn run_passes_lines_counts_bytes_and_keeps_the_end_of_stderr() {
        let mut lines = Vec::new();
        let limits = RunLimits {
            timeout: None,
            stderr_tail: 8,
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let out = run(
            sh_command("printf 'a=1\\nb=2\\n'; echo 0123456789abcdef >&2; exit 4"),
            &limits,
            &cancel,
            |l| lines.push(l.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(lines, ["a=1", "b=2"]);
        assert_eq!(out.stdout_bytes, 8);
        assert_eq!(out.stderr, "89abcdef");
        let failed = out.success("sh").unwrap_err().to_string();
        assert!(
            failed.contains("exit status: 4") && failed.contains("89abcdef"),
            "{failed}"
        );
        let missing = run(
            tokio::process::Command::new("/nonexistent/ffmpeg"),
            &limits,
            &cancel,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(missing, RunError::Spawn { .. }), "{missing}");
    }

    #[tokio::test]
    async fn a_time_limit_or_a_cancel_kills_the_whole_tree_and_a_group_kill_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        for by_cancel in [false, true] {
            let file = dir.path().join(format!("pids-{by_cancel}"));
            // The shell's child holds the pipes: killing only `sh` would leave it running.
            let script = format!("sleep 30 & echo $$ $! > {}; wait", file.display());
            let cancel = tokio_util::sync::CancellationToken::new();
            let limits = RunLimits {
                timeout: (!by_cancel).then_some(Duration::from_millis(300)),
                ..RunLimits::default()
            };
            let started = Instant::now();
            let running = run(sh_command(&script), &limits, &cancel, |_| {});
            let watcher = async {
                let pids = pids_in(&file).await;
                if by_cancel {
                    cancel.cancel();
                }
                pids
            };
            let (ended, pids) = tokio::join!(running, watcher);
            let err = ended.unwrap_err();
            if by_cancel {
                assert!(matches!(err, RunError::Cancelled { .. }), "{err}");
            } else {
                assert!(err.to_string().contains("time limit of 300ms"), "{err}");
            }
            assert!(started.elapsed() < Duration::from_secs(20));
            let deadline = Instant::now() + Duration::from_secs(10);
            while pids.iter().any(|&p| alive(p)) {
                assert!(
                    Instant::now() < deadline,
                    "the tree outlived the run: {pids:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The command is in this process's group, where a supervisor's group signal lands.
        let file = dir.path().join("group");
        let script = format!("cat /proc/$$/stat > {}", file.display());
        let cancel = tokio_util::sync::CancellationToken::new();
        run(sh_command(&script), &RunLimits::default(), &cancel, |_| {})
            .await
            .unwrap();
        let child = group_of(&std::fs::read_to_string(&file).unwrap());
        let own = group_of(&std::fs::read_to_string("/proc/self/stat").unwrap());
        assert_eq!(child, own, "a task stays in its worker's process group");
    }

    /// The process group in a /proc/PID/stat line.
    fn group_of(stat: &str) -> Option<i32> {
        stat.rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }

    /// Whether `pid` runs (a zombie does not: a container's init may never reap it).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    /// The pids a script wrote to `file`, once it has.
    async fn pids_in(file: &Path) -> Vec<u32> {
        for _ in 0..500 {
            if let Some(pids) = std::fs::read_to_string(file).ok().and_then(|s| {
                let pids: Vec<u32> = s
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                (pids.len() == 2).then_some(pids)
            }) {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the script never wrote its pids");
    }

    #[tokio::test]
    async fn a_process_left_holding_the_pipes_does_not_hold_the_run() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let out = run(
            sh_command("sleep 20 & echo done"),
            &RunLimits::default(),
            &cancel,
            |_| {},
        )
        .await
        .unwrap();
        assert!(out.status.success());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

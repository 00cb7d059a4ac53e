//! Seed 002's tasks: `sleep MS` always, and shell commands only where the worker allows them.
//! The same code runs a task on a worker (async) and in the local thread pool (blocking).

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_scale::process::{self, RunError, RunLimits};
use nimbus_worker::{Handler, Outcome, TaskContext};
use regex_lite::Regex;
use tokio_util::sync::CancellationToken;

/// The queue tasks go to unless told otherwise.
pub const TASKS_QUEUE: &str = "tasks";
/// The queue task reports go to unless told otherwise.
pub const RESULTS_QUEUE: &str = "task-results";

/// The handler kind of tasks.
pub const KIND: &str = "task";

/// The most bytes of a failing command's standard error quoted in its report.
const STDERR_QUOTE: usize = 400;

/// One line of a workload file.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    /// `sleep MS` (exactly): sleep that many milliseconds (the seed's unit).
    Sleep(Duration),
    /// `video {JSON}`: seed 002's Animoto task, a video made of images (`nimbus video gen`);
    /// the JSON is a video job's parameters.
    Video(Box<crate::video::VideoParams>),
    /// Any other line: a shell command, run with `sh -c` where allowed.
    Shell(String),
}

impl std::str::FromStr for TaskSpec {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let line = line.trim();
        if line.is_empty() {
            return Err("empty task".into());
        }
        if let Some(json) = line.strip_prefix("video ") {
            let params: crate::video::VideoParams =
                serde_json::from_str(json).map_err(|e| format!("video task: {e}"))?;
            params
                .validate(&crate::video::VideoLimits::default())
                .map_err(|e| format!("video task: {e}"))?;
            return Ok(Self::Video(Box::new(params)));
        }
        // `sleep MS` exactly; any longer line is a shell command (`sleep 1; echo done`).
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["sleep"] => return Err("`sleep` needs a duration in milliseconds".into()),
            ["sleep", arg] => {
                let ms: u64 = arg.parse().map_err(|_| {
                    format!("`{line}`: `{arg}` is not a whole number of milliseconds")
                })?;
                return Ok(Self::Sleep(Duration::from_millis(ms)));
            }
            _ => {}
        }
        Ok(Self::Shell(line.to_string()))
    }
}

/// Which shell commands may run: none, or those a regular expression matches in full.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    allow: Option<Regex>,
}

impl ExecPolicy {
    /// Allows commands that `pattern` matches as a whole (it is anchored at both ends, so
    /// `echo .*` does not allow `rm -rf /; echo x`).
    pub fn allow(pattern: &str) -> Result<Self, String> {
        let anchored = format!("^(?:{pattern})$");
        let regex = Regex::new(&anchored)
            .map_err(|e| format!("--allow-exec `{pattern}` is not a valid regex: {e}"))?;
        Ok(Self { allow: Some(regex) })
    }

    /// Why `command` may not run, if it may not.
    pub fn refusal(&self, command: &str) -> Option<String> {
        match &self.allow {
            None => Some(format!("shell command `{command}` refused: this worker runs only `sleep MS` (start it with --allow-exec PATTERN)")),
            Some(re) if !re.is_match(command) => {
                Some(format!("shell command `{command}` refused: it does not match --allow-exec `{}`", pattern_of(re)))
            }
            Some(_) => None,
        }
    }
}

fn pattern_of(re: &Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

/// What a task produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskOutput {
    /// Bytes written to standard output.
    pub bytes: u64,
}

fn failure_of(status: std::process::ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let tail: String = text
        .trim()
        .chars()
        .rev()
        .take(STDERR_QUOTE)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if tail.is_empty() {
        format!("command exited with {status}")
    } else {
        format!("command exited with {status}: {tail}")
    }
}

/// Runs a task on the async runtime; `env` is passed to shell commands. A shell command runs
/// in a process group of its own, all of which is killed when `cancel` fires.
pub async fn run(
    spec: &TaskSpec,
    policy: &ExecPolicy,
    env: &[(&str, &str)],
    cancel: &CancellationToken,
) -> Result<TaskOutput, String> {
    match spec {
        TaskSpec::Video(_) => Err(VIDEO_ON_WORKERS.into()),
        // No timer for a no-op task: it would wait for the timer wheel's next tick.
        TaskSpec::Sleep(d) if d.is_zero() => Ok(TaskOutput::default()),
        TaskSpec::Sleep(d) => {
            tokio::select! {
                () = tokio::time::sleep(*d) => Ok(TaskOutput::default()),
                () = cancel.cancelled() => Err(CANCELLED.into()),
            }
        }
        TaskSpec::Shell(command) => {
            if let Some(refusal) = policy.refusal(command) {
                return Err(refusal);
            }
            let mut sh = tokio::process::Command::new("sh");
            sh.args(["-c", command]).envs(env.iter().copied());
            let limits = RunLimits {
                timeout: None,
                stderr_tail: STDERR_QUOTE,
            };
            match process::run(sh, &limits, cancel, |_| {}).await {
                Ok(out) if out.status.success() => Ok(TaskOutput {
                    bytes: out.stdout_bytes,
                }),
                Ok(out) => Err(failure_of(out.status, out.stderr.as_bytes())),
                Err(RunError::Cancelled { .. }) => Err(CANCELLED.into()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Why a video task cannot run here.
const VIDEO_ON_WORKERS: &str =
    "video tasks run on workers (`nimbus worker`, which fetch and run ffmpeg), not here";

/// Why a task given up by its worker failed.
const CANCELLED: &str = "cancelled: the worker gave the task up";

/// Runs a task on the calling thread (the local back end's thread pool).
pub fn run_blocking(spec: &TaskSpec, policy: &ExecPolicy) -> Result<TaskOutput, String> {
    match spec {
        TaskSpec::Video(_) => Err(VIDEO_ON_WORKERS.into()),
        TaskSpec::Sleep(d) => {
            if !d.is_zero() {
                std::thread::sleep(*d);
            }
            Ok(TaskOutput::default())
        }
        TaskSpec::Shell(command) => {
            if let Some(refusal) = policy.refusal(command) {
                return Err(refusal);
            }
            let out = std::process::Command::new("sh")
                .args(["-c", command])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot start `sh`: {e}"))?;
            if out.status.success() {
                Ok(TaskOutput {
                    bytes: out.stdout.len() as u64,
                })
            } else {
                Err(failure_of(out.status, &out.stderr))
            }
        }
    }
}

/// The local back end (no queue at all): `threads` threads take tasks from a shared index.
/// Returns the elapsed time and the number of failed tasks.
pub fn run_pool(specs: &[TaskSpec], threads: usize, policy: &ExecPolicy) -> (Duration, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(spec) = specs.get(i) else { break };
                if run_blocking(spec, policy).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (started.elapsed(), failed.into_inner())
}

/// The worker handler for tasks; shell commands see `NIMBUS_TASK_ID` and `NIMBUS_WORKER_ID`.
#[derive(Debug, Clone, Default)]
pub struct TaskHandler {
    policy: ExecPolicy,
    videos: Option<crate::video::VideoRunner>,
}

impl TaskHandler {
    /// A handler that runs shell commands as `policy` allows (and no video tasks).
    pub fn new(policy: ExecPolicy) -> Self {
        Self {
            policy,
            videos: None,
        }
    }

    /// The same, making video tasks with `videos` (each stored at `tasks/<task id>/video.mp4`).
    pub fn with_videos(mut self, videos: crate::video::VideoRunner) -> Self {
        self.videos = Some(videos);
        self
    }

    async fn video(&self, params: &crate::video::VideoParams, task: &TaskContext) -> Outcome {
        let Some(videos) = &self.videos else {
            return Outcome::Failed(VIDEO_ON_WORKERS.into());
        };
        let key = format!("tasks/{}/video.mp4", task.task_id);
        match videos.make(params, &key, &task.cancel, &|_| {}).await {
            Ok(made) => Outcome::Done {
                output_bytes: made.bytes,
            },
            Err(crate::video::VideoError::Engine(e)) if e.is_retryable() => Outcome::RetryAfter {
                delay: Duration::from_secs(1),
                reason: e.to_string(),
            },
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[async_trait]
impl Handler for TaskHandler {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        let Ok(line) = std::str::from_utf8(&task.delivery.body) else {
            return Outcome::Failed("task is not UTF-8 text".into());
        };
        let spec: TaskSpec = match line.parse() {
            Ok(spec) => spec,
            Err(e) => return Outcome::Failed(e),
        };
        if let TaskSpec::Video(params) = &spec {
            return self.video(params, task).await;
        }
        let env = [
            ("NIMBUS_TASK_ID", task.task_id.as_str()),
            ("NIMBUS_WORKER_ID", task.worker_id.as_str()),
        ];
        match run(&spec, &self.policy, &env, &task.cancel).await {
            Ok(out) => Outcome::Done {
                output_bytes: out.bytes,
            },
            Err(e) => Outcome::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sleep_and_shell_lines_and_names_bad_ones() {
        assert_eq!(
            "sleep 10000".parse(),
            Ok(TaskSpec::Sleep(Duration::from_secs(10)))
        );
        assert_eq!("  sleep 0 ".parse(), Ok(TaskSpec::Sleep(Duration::ZERO)));
        assert_eq!("echo hi".parse(), Ok(TaskSpec::Shell("echo hi".into())));
        assert!("".parse::<TaskSpec>().unwrap_err().contains("empty"));
        assert!("sleep"
            .parse::<TaskSpec>()
            .unwrap_err()
            .contains("milliseconds"));
        assert!("sleep 1.5"
            .parse::<TaskSpec>()
            .unwrap_err()
            .contains("`1.5`"));
        assert_eq!(
            "sleep 1; echo x".parse(),
            Ok(TaskSpec::Shell("sleep 1; echo x".into()))
        );
    }

    #[test]
    fn the_exec_policy_matches_whole_command_lines() {
        assert!(ExecPolicy::default()
            .refusal("echo hi")
            .unwrap()
            .contains("--allow-exec"));
        let echo = ExecPolicy::allow("echo [a-z]+").unwrap();
        assert_eq!(echo.refusal("echo hi"), None);
        assert!(echo
            .refusal("echo hi; rm -rf /")
            .unwrap()
            .contains("does not match --allow-exec `echo [a-z]+`"));
        assert!(ExecPolicy::allow("(")
            .unwrap_err()
            .contains("not a valid regex"));
    }

    fn none() -> CancellationToken {
        CancellationToken::new()
    }

    #[tokio::test]
    async fn shell_tasks_report_output_size_and_failures() {
        let any = ExecPolicy::allow(".*").unwrap();
        let ok = run(&TaskSpec::Shell("printf hello".into()), &any, &[], &none())
            .await
            .unwrap();
        assert_eq!(ok.bytes, 5);
        let env = run(
            &TaskSpec::Shell("printf %s \"$NIMBUS_TASK_ID\"".into()),
            &any,
            &[("NIMBUS_TASK_ID", "t-42")],
            &none(),
        )
        .await;
        assert_eq!(env.unwrap().bytes, 4, "the task id reaches the command");
        let err = run(
            &TaskSpec::Shell("echo broken >&2; exit 3".into()),
            &any,
            &[],
            &none(),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("broken"),
            "{err}"
        );
        let refused = run(
            &TaskSpec::Shell("true".into()),
            &ExecPolicy::default(),
            &[],
            &none(),
        )
        .await
        .unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
        assert_eq!(
            run_blocking(&TaskSpec::Shell("printf abc".into()), &any)
                .unwrap()
                .bytes,
            3
        );
        assert!(run_blocking(&TaskSpec::Shell("false".into()), &ExecPolicy::default()).is_err());
        assert_eq!(
            run_blocking(
                &TaskSpec::Sleep(Duration::from_millis(1)),
                &ExecPolicy::default()
            ),
            Ok(TaskOutput::default())
        );
    }
}

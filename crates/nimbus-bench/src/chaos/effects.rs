//! The channel the harness counts side effects through: a named pipe each task writes one line
//! to (`<task id> <worker id>`), read here and stamped with the moment it arrived, so that a
//! task that ran twice can be matched against the disturbances of the workers that ran it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One side effect: task `task` ran on worker incarnation `worker` at `at`.
#[derive(Debug, Clone)]
pub struct Effect {
    /// When the harness read it.
    pub at: Instant,
    /// The task id (`NIMBUS_TASK_ID`).
    pub task: String,
    /// The worker id (`NIMBUS_WORKER_ID`), one per incarnation of a worker process.
    pub worker: String,
}

/// The named pipe and what came through it.
#[derive(Debug)]
pub struct Effects {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Effect>>>,
}

impl Effects {
    /// Makes the pipe at `path` and reads it on a thread of its own for the rest of the process.
    /// It is opened for reading and writing, so it never reads an end of file when no task has
    /// it open, and a task's write never blocks for want of a reader.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )?;
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::Builder::new()
            .name("chaos-effects".into())
            .spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let at = Instant::now();
                    if let Some((task, worker)) = line.trim().split_once(' ') {
                        let effect = Effect {
                            at,
                            task: task.to_string(),
                            worker: worker.to_string(),
                        };
                        lock(&sink).push(effect);
                    }
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            seen,
        })
    }

    /// The shell command a task runs for its effect.
    pub fn command(&self) -> String {
        format!(
            "echo \"$NIMBUS_TASK_ID $NIMBUS_WORKER_ID\" > '{}'",
            self.path.display()
        )
    }

    /// Effects so far.
    pub fn count(&self) -> usize {
        lock(&self.seen).len()
    }

    /// Every effect so far.
    pub fn snapshot(&self) -> Vec<Effect> {
        lock(&self.seen).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

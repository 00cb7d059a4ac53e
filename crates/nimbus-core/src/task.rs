//! Tasks as the worker runtime sees them: the message attributes that address a task, and the
//! report a worker sends when a task ends.

use serde::{Deserialize, Serialize};

/// Message attribute: the handler kind that runs the message (`task`, `atoms-solve`, ...).
pub const ATTR_KIND: &str = "kind";
/// Message attribute: the task's unique id; duplicates with the same id run once.
pub const ATTR_TASK_ID: &str = "task_id";
/// Message attribute: the submitting client's session.
pub const ATTR_SESSION: &str = "session";
/// Message attribute: the queue that gets the task's [`TaskReport`] when it ends.
pub const ATTR_REPLY_TO: &str = "reply_to";

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// The handler succeeded.
    Succeeded,
    /// The handler failed for good (an error, a refusal, a panic).
    Failed,
}

/// What a worker reports about one task, on the task's reply queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task's id.
    pub task_id: String,
    /// The submitting session, if the task had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The handler kind.
    pub kind: String,
    /// How it ended.
    pub status: TaskStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the handler ran, in milliseconds.
    pub duration_ms: f64,
    /// Which worker ran it.
    pub worker_id: String,
    /// The size of the task's output in bytes.
    pub output_bytes: u64,
    /// The delivery that ran it (1 unless an earlier worker died or the task was retried).
    pub attempt: u32,
}

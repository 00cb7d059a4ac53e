//! Jobs: the unit a user asks for (an atoms computation, a batch of images), their record and
//! the events workers publish about them.

use serde::{Deserialize, Serialize};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker is on it.
    Running,
    /// Done; the result is in the record.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Whether the job can change no more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Every state, for metrics.
    pub const ALL: [JobState; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Work done of work total, in the job's own unit (grid points for atoms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Done so far.
    pub done: u64,
    /// In all.
    pub total: u64,
}

/// A job's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// UUIDv7: sorts by creation time.
    pub id: String,
    /// What kind of job (`atoms`).
    pub kind: String,
    /// The parameters it was created with.
    pub params: serde_json::Value,
    /// Where it stands.
    pub state: JobState,
    /// How far it got.
    pub progress: Progress,
    /// The result, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, once failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the epoch when it was created.
    pub created_ms: i64,
    /// Milliseconds since the epoch of the last change of state.
    pub updated_ms: i64,
}

/// What workers publish about a job on the `events` topic (attribute `job_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// More work is done.
    Progress {
        /// The job.
        job_id: String,
        /// Done so far.
        done: u64,
        /// In all.
        total: u64,
    },
    /// One item of a job of many items ended (an image classified), with its result.
    Item {
        /// The job.
        job_id: String,
        /// The item's position in the job.
        index: usize,
        /// Its result.
        item: serde_json::Value,
        /// Items ended so far.
        done: u64,
        /// Items in all.
        total: u64,
    },
    /// The job succeeded.
    Result {
        /// The job.
        job_id: String,
        /// Its result.
        result: serde_json::Value,
    },
    /// The job failed.
    Failed {
        /// The job.
        job_id: String,
        /// Why.
        error: String,
    },
    /// The job was cancelled.
    Cancelled {
        /// The job.
        job_id: String,
    },
}

impl JobEvent {
    /// The job the event is about.
    pub fn job_id(&self) -> &str {
        match self {
            Self::Progress { job_id, .. }
            | Self::Item { job_id, .. }
            | Self::Result { job_id, .. }
            | Self::Failed { job_id, .. }
            | Self::Cancelled { job_id } => job_id,
        }
    }

    /// Whether no event follows this one.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Progress { .. } | Self::Item { .. })
    }
}

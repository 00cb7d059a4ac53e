//! The nimbus worker runtime, which every job kind runs on: receive in batches with long polls,
//! run handlers with bounded concurrency, extend leases of long tasks, claim task ids so
//! duplicates run once, acknowledge after success, retry with backoff, report, shut down cleanly.

pub mod claim;
mod runtime;
pub mod sweep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::{Delivery, Engine, QueueName};
use tokio_util::sync::CancellationToken;

pub use runtime::{FreeSlot, Worker, WorkerConfig, WorkerStats, DEFAULT_MAX_CRASHES};

/// How a handler's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success: the message is deleted and a report is sent.
    Done {
        /// The size of what the task produced (its output lives where the handler put it).
        output_bytes: u64,
    },
    /// A transient failure: the message comes back after `delay`, doubled on each retry.
    RetryAfter {
        /// The base delay.
        delay: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// A permanent failure: recorded, acknowledged and reported; never retried.
    Failed(String),
}

impl Outcome {
    /// Success with no output.
    pub fn done() -> Self {
        Self::Done { output_bytes: 0 }
    }
}

/// Everything a handler knows about the task it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task's id (its `task_id` attribute, or else the message id).
    pub task_id: String,
    /// The handler kind.
    pub kind: String,
    /// The worker running it.
    pub worker_id: String,
    /// The queue it came from.
    pub queue: QueueName,
    /// The delivery: body, attributes, receive count.
    pub delivery: Delivery,
    /// The engine, for handlers that read blobs or publish events.
    pub engine: Engine,
    /// Cancelled when the worker gives the task up (shutdown past the grace period, or the lease
    /// was lost); a handler should stop soon after.
    pub cancel: CancellationToken,
}

/// Runs messages of one kind. Payloads are bytes plus attributes, decoded here at the edge.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Runs one task.
    async fn handle(&self, task: &TaskContext) -> Outcome;

    /// The runtime fails the task for good without running it: its workers kept dying under it
    /// (`--max-crashes`), or its id cannot name a claim. A handler that keeps state of its own
    /// (a job record) ends it here; the default does nothing. It may be called more than once
    /// for one task (a worker can die after the call); an error brings the message back later,
    /// to be failed then.
    async fn abandoned(&self, _task: &TaskContext, _reason: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Handlers by kind (the message's `kind` attribute).
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn Handler>>,
}

impl Handlers {
    /// Registers `handler` for `kind`.
    pub fn with(mut self, kind: impl Into<String>, handler: impl Handler + 'static) -> Self {
        self.by_kind.insert(kind.into(), Arc::new(handler));
        self
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.by_kind.get(kind).cloned()
    }

    /// The kinds registered, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<_> = self.by_kind.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

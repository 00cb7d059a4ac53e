//! nimbus's core: the engine traits (queue, topic, ledger, blobs) with SQS, SNS, DynamoDB and S3
//! semantics, their limits, the engine-neutral error and the one clock. No IO framework (tokio
//! only for its clock) and no cloud SDK here.

pub mod clock;
pub mod compute;
pub mod error;
pub mod job;
pub mod ledger;
pub mod names;
pub mod queue;
pub mod task;
pub mod topic;
pub mod validate;

use std::sync::Arc;

pub use compute::{ComputeProvider, Instance, InstanceState, LaunchSpec, WorkerLoad};
pub use error::{Error, ErrorKind, Result};
pub use job::{Job, JobEvent, JobState, Progress};
pub use ledger::{Condition, Item, ItemKey, Ledger, Order, Page};
pub use names::{QueueName, TopicName};
pub use object_store::ObjectStore;
pub use queue::{
    DeadLetter, Delivery, Depth, OutgoingMessage, Queue, QueueOptions, Receipt, ReceiveRequest,
};
pub use task::{TaskReport, TaskStatus};
pub use topic::{Filter, Subscription, Topic};

/// The four engine services one deployment runs on, each behind its narrow trait.
///
/// Blobs are `object_store`'s [`ObjectStore`] as it is: a local directory on the embedded
/// engine, S3 on the AWS engine.
///
/// Made by [`Engine::new`] only (the struct is `non_exhaustive`), which puts every service
/// behind the core rules.
#[derive(Clone)]
#[non_exhaustive]
pub struct Engine {
    /// Queues (SQS).
    pub queue: Arc<dyn Queue>,
    /// Topics (SNS to SQS).
    pub topic: Arc<dyn Topic>,
    /// The ledger (DynamoDB).
    pub ledger: Arc<dyn Ledger>,
    /// Blobs (S3).
    pub blobs: Arc<dyn ObjectStore>,
}

impl Engine {
    /// The engine of these services, each behind the core rules ([`validate`]): the one way an
    /// engine is made, so that every engine refuses the same calls the same way.
    pub fn new(
        queue: Arc<dyn Queue>,
        topic: Arc<dyn Topic>,
        ledger: Arc<dyn Ledger>,
        blobs: Arc<dyn ObjectStore>,
    ) -> Self {
        Self {
            queue: Arc::new(validate::CheckedQueue(queue)),
            topic: Arc::new(validate::CheckedTopic(topic)),
            ledger: Arc::new(validate::CheckedLedger(ledger)),
            blobs,
        }
    }

    /// The same engine with its queue service replaced (behind the core rules too): what a
    /// test does to put a fault in front of one service.
    pub fn with_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Arc::new(validate::CheckedQueue(queue));
        self
    }

    /// The same engine with its ledger replaced (behind the core rules too).
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Arc::new(validate::CheckedLedger(ledger));
        self
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("blobs", &self.blobs.to_string())
            .finish_non_exhaustive()
    }
}

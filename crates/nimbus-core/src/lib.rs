//! nimbus's core: the engine traits (queue, topic, ledger, blobs) with SQS, SNS, DynamoDB and S3
//! semantics, their limits, and the engine-neutral error. No IO framework and no cloud SDK here.

pub mod compute;
pub mod error;
pub mod job;
pub mod ledger;
pub mod names;
pub mod queue;
pub mod task;
pub mod topic;

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
#[derive(Clone)]
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

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("blobs", &self.blobs.to_string())
            .finish_non_exhaustive()
    }
}

//! Image classification (seeds 001 and 004): the web tier stores each image in blobs
//! (`inputs/<job>/<n>`) and sends one request per image to `classify-requests` (claim check: the
//! key, not the bytes); a worker that loaded the model once classifies it, stores the labels in
//! blobs (`outputs/<job>/<n>.json`) and publishes an `item` event; the last image of a job (a
//! ledger counter) assembles the result and publishes it. The events reach exactly the web
//! replica that waits for that job (its own queue on the `events` topic), so no response is ever
//! picked up by the wrong request.

pub mod images;
#[cfg(feature = "classify")]
pub mod model;

use bytes::Bytes;
use nimbus_core::task::{ATTR_KIND, ATTR_TASK_ID};
use nimbus_core::{Error, Job, JobEvent, OutgoingMessage, QueueName, Result};
use object_store::path::Path as BlobPath;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use images::{check_header, ImageError, Prediction};

use crate::jobs::{blob_error, JobStore};

/// The job kind, the requests queue and the handler kind.
pub const KIND: &str = "classify";
/// Where classification requests go.
pub const REQUESTS: &str = "classify-requests";
/// How many labels each image gets.
pub const TOP_K: usize = 5;

/// One image's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    /// Its position in the request.
    pub index: usize,
    /// Its file name as uploaded.
    pub name: String,
    /// The most likely labels, best first (empty when it failed).
    pub labels: Vec<Prediction>,
    /// Why it could not be classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    job_id: String,
    index: usize,
    name: String,
    key: String,
}

/// Stores the images, creates the job and queues one request per image. The images must have
/// passed [`check_header`].
pub async fn submit(store: &JobStore, images: Vec<(String, Bytes)>) -> Result<Job> {
    let names: Vec<&str> = images.iter().map(|(n, _)| n.as_str()).collect();
    let job = JobStore::new_job(KIND, json!({ "images": names }), images.len() as u64);
    store.create(&job).await?;
    let blobs = &store.engine().blobs;
    let mut requests = Vec::with_capacity(images.len());
    for (index, (name, bytes)) in images.into_iter().enumerate() {
        let key = format!("inputs/{}/{index}", job.id);
        if let Err(e) = blobs.put(&BlobPath::from(key.as_str()), bytes.into()).await {
            store
                .fail(&job.id, &format!("could not store image `{name}`: {e}"))
                .await?;
            return Err(blob_error(e));
        }
        let body = serde_json::to_vec(&Request {
            job_id: job.id.clone(),
            index,
            name,
            key,
        })
        .map_err(|e| Error::internal("cannot encode").with_source(e))?;
        requests.push(
            OutgoingMessage::new(body)
                .attribute(ATTR_KIND, KIND)
                .attribute(ATTR_TASK_ID, format!("{}/{index}", job.id)),
        );
    }
    let queue = QueueName::new(REQUESTS)?;
    for chunk in requests.chunks(nimbus_core::queue::MAX_BATCH) {
        if let Err(e) = store
            .engine()
            .queue
            .send_batch(&queue, chunk.to_vec())
            .await
        {
            store
                .fail(&job.id, &format!("could not queue the images: {e}"))
                .await?;
            return Err(e);
        }
    }
    Ok(job)
}

/// Records one image's outcome; the last one of the job assembles and publishes the result.
pub async fn record(store: &JobStore, job_id: &str, result: ImageResult) -> Result<()> {
    let engine = store.engine();
    let bytes =
        serde_json::to_vec(&result).map_err(|e| Error::internal("cannot encode").with_source(e))?;
    let output = format!("outputs/{job_id}/{}.json", result.index);
    engine
        .blobs
        .put(&BlobPath::from(output), Bytes::from(bytes).into())
        .await
        .map_err(blob_error)?;
    // One part per image: a redelivered image is counted once, and the count is read back from
    // the parts, so a retry after a crash between these steps still completes the job.
    let done = store
        .record_part(job_id, "image", result.index as u64, Bytes::new())
        .await?
        .len() as u64;
    let total = store.get(job_id).await?.progress.total;
    let current = engine
        .ledger
        .get(&crate::jobs::job_item(job_id, "progress")?)
        .await?
        .map_or(0, |i| i.counter.max(0) as u64);
    if done > current {
        store.add_progress(job_id, done - current, total).await?;
    }
    let item = serde_json::to_value(&result)
        .map_err(|e| Error::internal("cannot encode").with_source(e))?;
    store
        .publish(&JobEvent::Item {
            job_id: job_id.to_string(),
            index: result.index,
            item,
            done,
            total,
        })
        .await?;
    if done >= total {
        finish(store, job_id, total).await?;
    }
    Ok(())
}

/// Reads every image's outcome into the job's result; only the call that ends the job publishes.
async fn finish(store: &JobStore, job_id: &str, total: u64) -> Result<()> {
    let mut results = Vec::with_capacity(total as usize);
    for index in 0..total {
        let path = BlobPath::from(format!("outputs/{job_id}/{index}.json"));
        let bytes = store
            .engine()
            .blobs
            .get(&path)
            .await
            .map_err(blob_error)?
            .bytes()
            .await
            .map_err(blob_error)?;
        let r: ImageResult = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal("corrupt output").with_source(e))?;
        results.push(r);
    }
    let result = serde_json::to_value(ClassifyResult { images: results })
        .map_err(|e| Error::internal("cannot encode").with_source(e))?;
    store.succeed(job_id, result).await.map(drop)
}

/// A classify job's result: every image's outcome, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResult {
    /// One per image.
    pub images: Vec<ImageResult>,
}

/// The worker side: runs the model on each request.
#[cfg(feature = "classify")]
pub use handler::ClassifyHandler;

#[cfg(feature = "classify")]
mod handler {
    use std::sync::Arc;

    use async_trait::async_trait;
    use nimbus_worker::{Handler, Outcome, TaskContext};
    use object_store::path::Path as BlobPath;

    use super::model::{Classifier, ClassifyError};
    use super::{record, ImageResult, Request, TOP_K};
    use crate::jobs::JobStore;

    /// Classifies one image per message with a model loaded once.
    #[derive(Clone)]
    pub struct ClassifyHandler {
        store: JobStore,
        model: Arc<Classifier>,
    }

    impl std::fmt::Debug for ClassifyHandler {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClassifyHandler").finish_non_exhaustive()
        }
    }

    impl ClassifyHandler {
        /// A handler running `model`.
        pub fn new(store: JobStore, model: Arc<Classifier>) -> Self {
            Self { store, model }
        }
    }

    #[async_trait]
    impl Handler for ClassifyHandler {
        async fn handle(&self, task: &TaskContext) -> Outcome {
            let request: Request = match serde_json::from_slice(&task.delivery.body) {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(format!("malformed request: {e}")),
            };
            let got = self
                .store
                .engine()
                .blobs
                .get(&BlobPath::from(request.key.as_str()))
                .await;
            let bytes = match got {
                Ok(r) => match r.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return Outcome::RetryAfter {
                            delay: std::time::Duration::from_secs(1),
                            reason: e.to_string(),
                        }
                    }
                },
                Err(e) => {
                    return Outcome::RetryAfter {
                        delay: std::time::Duration::from_secs(1),
                        reason: e.to_string(),
                    }
                }
            };
            let model = self.model.clone();
            let classified =
                tokio::task::spawn_blocking(move || model.classify(&bytes, TOP_K)).await;
            let (labels, error) = match classified {
                Ok(Ok(labels)) => (labels, None),
                Ok(Err(ClassifyError::Image(e))) => (Vec::new(), Some(e.to_string())),
                Ok(Err(ClassifyError::Model(e))) => return self.fail(&request.job_id, e).await,
                Err(e) => {
                    return self
                        .fail(&request.job_id, format!("classifier thread failed: {e}"))
                        .await
                }
            };
            let result = ImageResult {
                index: request.index,
                name: request.name,
                labels,
                error,
            };
            match record(&self.store, &request.job_id, result).await {
                Ok(()) => Outcome::done(),
                Err(e) if e.is_retryable() => Outcome::RetryAfter {
                    delay: std::time::Duration::from_millis(500),
                    reason: e.to_string(),
                },
                Err(e) => self.fail(&request.job_id, e.to_string()).await,
            }
        }
    }

    impl ClassifyHandler {
        /// Ends the job as failed (its waiting request learns why) and fails the task.
        async fn fail(&self, job_id: &str, error: String) -> Outcome {
            self.store.fail_with_task(job_id, error).await
        }
    }
}

//! Jobs behind dead letters. A job's message that a queue moved to its dead-letter queue
//! (received `max_receives` times without ending: its workers kept dying, its leases kept
//! running out, it kept asking for a retry) would leave the job waiting for ever. The watcher
//! fails such a job, naming the queue its message waits in, and leaves the message there; a
//! redrive of that queue reopens the job ([`reopen`]) before its message goes back, so the job
//! can still end well.

use std::collections::HashMap;
use std::time::Duration;

use nimbus_core::task::ATTR_TASK_ID;
use nimbus_core::{DeadLetter, Delivery, ErrorKind, JobState, QueueName, ReceiveRequest, Result};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jobs::{job_of_task, JobStore};

/// How every error of a job failed by a dead letter begins (and how [`reopen`] knows it).
pub const DEAD_LETTERED: &str = "dead-lettered: ";

/// How often the watcher looks at the dead-letter queues' depths.
const EVERY: Duration = Duration::from_secs(5);
/// How often it reads a dead-letter queue whose depth did not change (a redrive that failed
/// midway can reopen a job whose message is still there).
const AGAIN_AFTER: Duration = Duration::from_secs(60);
/// How long a pass holds the dead letters it reads (they are made visible again at its end; a
/// redrive waits for them).
pub const PASS_LEASE: Duration = Duration::from_secs(10);
/// The most dead letters one pass reads of one queue.
const MAX_PER_PASS: usize = 1000;

/// Watches the dead-letter queues of `queues` until `stop`, failing the job of every dead letter
/// (see [`pass`]). A queue without a dead-letter queue costs a look at its options per tick.
pub async fn watch(store: JobStore, queues: Vec<QueueName>, stop: CancellationToken) {
    // Per queue: its dead letters at the last pass, and when that was.
    let mut last: HashMap<QueueName, (u64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        for queue in &queues {
            if let Err(e) = tick(&store, queue, &mut last).await {
                tracing::warn!(queue = %queue, error = %e, "could not look at the queue's dead letters");
            }
        }
    }
}

/// Reads `queue`'s dead letters when their count changed since the last pass (or a while went by).
async fn tick(
    store: &JobStore,
    queue: &QueueName,
    last: &mut HashMap<QueueName, (u64, Instant)>,
) -> Result<()> {
    let engine = store.engine();
    let Some(dead) = engine.queue.queue_options(queue).await?.dead_letter else {
        return Ok(());
    };
    let depth = engine.queue.depth(&dead.queue).await?;
    let count = depth.visible + depth.in_flight + depth.delayed;
    if count == 0 {
        // Emptied (redriven): the next dead letter is new, whatever the count was before.
        last.remove(queue);
        return Ok(());
    }
    let unchanged = last
        .get(queue)
        .is_some_and(|(seen, at)| *seen == count && at.elapsed() < AGAIN_AFTER);
    if unchanged {
        return Ok(());
    }
    let failed = read(store, queue, &dead).await?;
    if failed > 0 {
        tracing::warn!(queue = %queue, dead_letters = count, failed, "jobs failed: their messages were dead-lettered");
    }
    last.insert(queue.clone(), (count, Instant::now()));
    Ok(())
}

/// One look at `queue`'s dead letters: the job of each is failed (unless it has ended), the
/// messages stay in the dead-letter queue, visible again once the pass is over. Returns how many
/// jobs it failed; a queue without a dead-letter queue has none.
pub async fn pass(store: &JobStore, queue: &QueueName) -> Result<usize> {
    match store.engine().queue.queue_options(queue).await?.dead_letter {
        Some(dead) => read(store, queue, &dead).await,
        None => Ok(0),
    }
}

async fn read(store: &JobStore, queue: &QueueName, dead: &DeadLetter) -> Result<usize> {
    let engine = store.engine();
    let mut held = Vec::new();
    let mut failed = 0;
    let read = async {
        while held.len() < MAX_PER_PASS {
            let request =
                ReceiveRequest::new(10.min(MAX_PER_PASS - held.len())).visibility(PASS_LEASE);
            let got = engine.queue.receive(&dead.queue, request).await?;
            if got.is_empty() {
                return Ok(());
            }
            for delivery in got {
                let error = dead_lettered_error(queue, dead, &delivery);
                if let Some(task_id) = delivery.attributes.get(ATTR_TASK_ID) {
                    failed += usize::from(store.fail_for_task(task_id, &error).await?);
                }
                held.push(delivery.receipt);
            }
        }
        Ok(())
    }
    .await;
    for receipt in &held {
        let release = engine
            .queue
            .change_visibility(&dead.queue, receipt, Duration::ZERO);
        if let Err(e) = release.await {
            // Redriven meanwhile (its receipt is gone), or it shows again after PASS_LEASE.
            tracing::debug!(queue = %dead.queue, error = %e, "could not release a dead letter");
        }
    }
    read.map(|()| failed)
}

/// Why a job whose message `delivery` was dead-lettered failed, and what to do about it.
fn dead_lettered_error(queue: &QueueName, dead: &DeadLetter, delivery: &Delivery) -> String {
    let task = delivery
        .attributes
        .get(ATTR_TASK_ID)
        .map_or_else(|| delivery.message_id.clone(), |t| format!("task `{t}`"));
    format!(
        "{DEAD_LETTERED}{task} was received {} times from queue `{queue}` without ending; its \
         message waits in `{}`: move it back (POST /api/v1/queues/{queue}/redrive, or the \
         Queues page) to run it again",
        dead.max_receives, dead.queue
    )
}

/// Before dead letter `delivery` goes back to its queue: its job, if a dead letter failed it,
/// is running again (its error cleared), so that the redriven task can end it. Returns whether
/// a job was reopened.
pub async fn reopen(store: &JobStore, delivery: &Delivery) -> Result<bool> {
    let Some(id) = delivery
        .attributes
        .get(ATTR_TASK_ID)
        .and_then(|t| job_of_task(t))
    else {
        return Ok(false);
    };
    let reopened = store
        .update(id, |job| {
            let by_dead_letter = job.state == JobState::Failed
                && job
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(DEAD_LETTERED));
            if by_dead_letter {
                job.state = JobState::Running;
                job.error = None;
            }
            by_dead_letter
        })
        .await;
    match reopened {
        Ok((_, changed)) => Ok(changed),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use nimbus_core::{OutgoingMessage, QueueOptions};

    use super::*;

    async fn store_with_dead_letters(dir: &std::path::Path) -> (JobStore, QueueName, QueueName) {
        let store = crate::jobs::test_store(dir, &[]).await;
        let engine = store.engine();
        let (work, dead) = (
            QueueName::new("w").unwrap(),
            QueueName::new("w-dead").unwrap(),
        );
        engine
            .queue
            .create_queue(&dead, &QueueOptions::default())
            .await
            .unwrap();
        let options = QueueOptions {
            dead_letter: Some(DeadLetter {
                queue: dead.clone(),
                max_receives: 1,
            }),
            ..QueueOptions::default()
        };
        engine.queue.create_queue(&work, &options).await.unwrap();
        (store, work, dead)
    }

    /// Sends a message of task `task_id` and has the queue dead-letter it.
    async fn dead_letter(store: &JobStore, work: &QueueName, task_id: &str) {
        let queue = &store.engine().queue;
        let message = OutgoingMessage::new("{}").attribute(ATTR_TASK_ID, task_id);
        queue.send(work, message).await.unwrap();
        let request = ReceiveRequest::new(10).visibility(Duration::ZERO);
        assert_eq!(queue.receive(work, request).await.unwrap().len(), 1);
        assert!(
            queue.receive(work, request).await.unwrap().is_empty(),
            "moved"
        );
    }

    #[tokio::test]
    async fn a_dead_letter_fails_its_job_once_and_stays_and_only_its_failure_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let (store, work, dead) = store_with_dead_letters(dir.path()).await;
        let (behind, other) = (
            JobStore::new_job("atoms", serde_json::json!({}), 1),
            JobStore::new_job("atoms", serde_json::json!({}), 1),
        );
        store.create(&behind).await.unwrap();
        store.create(&other).await.unwrap();
        store.fail(&other.id, "the handler said no").await.unwrap();
        dead_letter(&store, &work, &format!("{}/slab/0", behind.id)).await;
        dead_letter(&store, &work, &format!("{}/slab/0", other.id)).await;
        dead_letter(&store, &work, "a-task-of-no-job").await;

        assert_eq!(pass(&store, &work).await.unwrap(), 1, "one job failed");
        let failed = store.get(&behind.id).await.unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert!(failed.error.unwrap().starts_with(DEAD_LETTERED));
        assert_eq!(
            pass(&store, &work).await.unwrap(),
            0,
            "nothing new the second time"
        );
        let depth = store.engine().queue.depth(&dead).await.unwrap();
        assert_eq!(
            depth.visible, 3,
            "the dead letters stay, visible: {depth:?}"
        );
        assert_eq!(
            pass(&store, &dead).await.unwrap(),
            0,
            "a queue without dead letters"
        );

        let letters = store
            .engine()
            .queue
            .receive(&dead, ReceiveRequest::new(10))
            .await
            .unwrap();
        let mut reopened = 0;
        for d in &letters {
            reopened += usize::from(reopen(&store, d).await.unwrap());
        }
        assert_eq!(reopened, 1, "only the job a dead letter failed");
        assert_eq!(
            store.get(&behind.id).await.unwrap().state,
            JobState::Running
        );
        let still = store.get(&other.id).await.unwrap();
        assert_eq!(
            (still.state, still.error.as_deref()),
            (JobState::Failed, Some("the handler said no"))
        );
    }
}

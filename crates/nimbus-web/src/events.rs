//! Job events to browsers: this replica's own queue, subscribed to the `events` topic, is
//! drained by a pump that hands each event to the watchers of its job (a broadcast channel per
//! watched job), and `GET /api/v1/jobs/{id}/events` streams them as server-sent events, starting
//! with a snapshot from the ledger so a page opened late or reloaded shows the same state.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use nimbus_core::{
    Engine, Job, JobEvent, QueueName, QueueOptions, ReceiveRequest, Result, TopicName,
};
use nimbus_workloads::jobs::{JobStore, EVENTS_TOPIC};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Watchers by job.
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<JobEvent>>>>,
}

impl EventHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<JobEvent>>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts watching `job_id`.
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<JobEvent> {
        self.lock()
            .entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Hands `event` to its job's watchers, if any; forgets jobs nobody watches any more.
    pub fn dispatch(&self, event: JobEvent) {
        let mut channels = self.lock();
        if let Some(tx) = channels.get(event.job_id()) {
            if tx.send(event.clone()).is_err() || (event.is_terminal() && tx.receiver_count() == 0)
            {
                channels.remove(event.job_id());
            }
        }
        channels.retain(|_, tx| tx.receiver_count() > 0);
    }
}

/// Creates this replica's event queue, subscribes it, and pumps events to `hub` until
/// `shutdown`; then removes the queue. Await the handle to know it is gone.
pub async fn start_pump(
    engine: Engine,
    hub: EventHub,
    replica: &str,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let queue = QueueName::new(format!("events-{replica}"))?;
    // Short retention: a replica that died leaves a queue that empties itself.
    let options = QueueOptions {
        retention: Duration::from_secs(60),
        ..QueueOptions::default()
    };
    engine.queue.create_queue(&queue, &options).await?;
    engine
        .topic
        .create_topic(&TopicName::new(EVENTS_TOPIC)?)
        .await?;
    let subscription = engine
        .topic
        .subscribe(&TopicName::new(EVENTS_TOPIC)?, &queue, None)
        .await?;
    Ok(tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let request = ReceiveRequest::new(100).wait(Duration::from_millis(500));
            let got = match engine.queue.receive(&queue, request).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "event pump receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if got.is_empty() {
                continue;
            }
            for d in &got {
                match serde_json::from_slice::<JobEvent>(&d.body) {
                    Ok(event) => hub.dispatch(event),
                    Err(e) => tracing::warn!(error = %e, "not a job event; dropped"),
                }
            }
            let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
            if let Err(e) = engine.queue.delete_batch(&queue, &receipts).await {
                tracing::warn!(error = %e, "event pump delete failed");
            }
        }
        if let Err(e) = engine.topic.unsubscribe(&subscription.id).await {
            tracing::warn!(queue = %queue, error = %e, "could not unsubscribe the event queue");
        }
        if let Err(e) = engine.queue.delete_queue(&queue).await {
            tracing::warn!(queue = %queue, error = %e, "could not remove the event queue");
        }
    }))
}

/// How long a stream waits for an event before it looks at the job record itself.
const RECHECK: Duration = Duration::from_secs(10);

fn sse(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

fn event_name(e: &JobEvent) -> &'static str {
    match e {
        JobEvent::Progress { .. } => "progress",
        JobEvent::Item { .. } => "item",
        JobEvent::Result { .. } => "result",
        JobEvent::Failed { .. } => "failed",
        JobEvent::Cancelled { .. } => "cancelled",
    }
}

/// The SSE stream of one job: a `snapshot` (the job record), then `progress` events with
/// rising `done`, then one of `result`, `failed`, `cancelled`, and the end.
pub fn stream(
    store: JobStore,
    mut rx: broadcast::Receiver<JobEvent>,
    job: Job,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let events = async_stream(move |tx| async move {
        let mut done = job.progress.done;
        let terminal = job.state.is_terminal();
        let id = job.id.clone();
        if tx.send(sse("snapshot", &job)).await.is_err() || terminal {
            return;
        }
        loop {
            // Ends when the client leaves; looks at the record when nothing came for a while,
            // so a lost final event cannot keep the stream open forever.
            let received = tokio::select! {
                () = tx.closed() => return,
                r = tokio::time::timeout(RECHECK, rx.recv()) => r,
            };
            let event = match received {
                Ok(Ok(e)) => e,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                    match store.get(&id).await {
                        // Fell behind, or quiet: a fresh snapshot says where the job is.
                        Ok(job) => {
                            if job.progress.done > done || job.state.is_terminal() {
                                done = done.max(job.progress.done);
                                if tx.send(sse("snapshot", &job)).await.is_err()
                                    || job.state.is_terminal()
                                {
                                    return;
                                }
                            }
                            continue;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let JobEvent::Progress { done: d, .. } = &event {
                if *d <= done {
                    continue;
                }
                done = *d;
            }
            if tx.send(sse(event_name(&event), &event)).await.is_err() || event.is_terminal() {
                return;
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A stream fed by an async producer through a small channel.
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = std::result::Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)))
}

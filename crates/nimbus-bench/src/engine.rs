//! `nimbus bench engine`: the queue's throughput through the engine traits, scenario by scenario.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::{OutgoingMessage, Queue, QueueName, QueueOptions, ReceiveRequest, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct EngineBench {
    /// Messages per scenario run.
    pub messages: usize,
    /// Body size in bytes.
    pub payload: usize,
    /// Runs per scenario; the median is reported.
    pub runs: usize,
}

/// One scenario; `batch` is the messages per call, `consumers` the concurrent receiving tasks.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Sends only, in batches of `batch`.
    Send { batch: usize },
    /// Receive and delete only, of messages already sent, in batches of `batch`.
    ReceiveDelete { batch: usize },
    /// Send, receive, delete in turn, one batch at a time, one task.
    RoundTripSequential { batch: usize },
    /// One producer and `consumers` consumers at once, in batches of `batch`.
    RoundTripConcurrent { batch: usize, consumers: usize },
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send { batch } => write!(f, "send, batch {batch}"),
            Self::ReceiveDelete { batch } => write!(f, "receive+delete, batch {batch}"),
            Self::RoundTripSequential { batch } => write!(f, "round trip, 1 task, batch {batch}"),
            Self::RoundTripConcurrent { batch, consumers } => {
                write!(
                    f,
                    "round trip, 1 producer + {consumers} consumer(s), batch {batch}"
                )
            }
        }
    }
}

/// The scenarios the foundation's aims are stated in.
pub const SCENARIOS: [Scenario; 7] = [
    Scenario::Send { batch: 10 },
    Scenario::Send { batch: 100 },
    Scenario::ReceiveDelete { batch: 10 },
    Scenario::ReceiveDelete { batch: 100 },
    Scenario::RoundTripSequential { batch: 100 },
    Scenario::RoundTripConcurrent {
        batch: 100,
        consumers: 1,
    },
    Scenario::RoundTripConcurrent {
        batch: 100,
        consumers: 4,
    },
];

impl EngineBench {
    /// Messages per second of one run of `scenario` on a fresh queue.
    pub async fn run(&self, queue: &Arc<dyn Queue>, scenario: Scenario) -> Result<f64> {
        let name = QueueName::new(format!("bench-{:08x}", fastrand_u32()))?;
        queue.create_queue(&name, &QueueOptions::default()).await?;
        let result = self.measure(queue, &name, scenario).await;
        queue.delete_queue(&name).await?;
        result
    }

    async fn measure(
        &self,
        queue: &Arc<dyn Queue>,
        name: &QueueName,
        scenario: Scenario,
    ) -> Result<f64> {
        let n = self.messages;
        let start = Instant::now();
        match scenario {
            Scenario::Send { batch } => self.send_all(queue, name, batch).await?,
            Scenario::ReceiveDelete { batch } => {
                self.send_all(queue, name, 100).await?;
                let start = Instant::now();
                drain(queue, name, batch, n, Duration::ZERO).await?;
                return Ok(n as f64 / start.elapsed().as_secs_f64());
            }
            Scenario::RoundTripSequential { batch } => {
                for chunk in (0..n).step_by(batch) {
                    let count = batch.min(n - chunk);
                    queue.send_batch(name, self.batch(count)).await?;
                    drain(queue, name, count, count, Duration::ZERO).await?;
                }
            }
            Scenario::RoundTripConcurrent { batch, consumers } => {
                let left = Arc::new(AtomicUsize::new(n));
                let mut tasks = Vec::new();
                for _ in 0..consumers {
                    let (queue, name, left) = (queue.clone(), name.clone(), left.clone());
                    tasks.push(tokio::spawn(async move {
                        consume(&queue, &name, batch, &left).await
                    }));
                }
                self.send_all(queue, name, batch).await?;
                for t in tasks {
                    t.await.map_err(|e| {
                        nimbus_core::Error::internal("consumer task failed").with_source(e)
                    })??;
                }
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    fn batch(&self, count: usize) -> Vec<OutgoingMessage> {
        vec![OutgoingMessage::new(vec![b'x'; self.payload]); count]
    }

    async fn send_all(&self, queue: &Arc<dyn Queue>, name: &QueueName, batch: usize) -> Result<()> {
        let one = self.batch(batch);
        for chunk in (0..self.messages).step_by(batch) {
            let count = batch.min(self.messages - chunk);
            queue.send_batch(name, one[..count].to_vec()).await?;
        }
        Ok(())
    }
}

/// Receives and deletes until `total` messages have been handled.
async fn drain(
    queue: &Arc<dyn Queue>,
    name: &QueueName,
    batch: usize,
    total: usize,
    wait: Duration,
) -> Result<()> {
    let mut done = 0;
    while done < total {
        let got = queue
            .receive(
                name,
                ReceiveRequest::new(batch.min(total - done)).wait(wait),
            )
            .await?;
        if got.is_empty() {
            continue;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
        queue.delete_batch(name, &receipts).await?;
        done += got.len();
    }
    Ok(())
}

/// One of several consumers sharing the count of messages `left`.
async fn consume(
    queue: &Arc<dyn Queue>,
    name: &QueueName,
    batch: usize,
    left: &AtomicUsize,
) -> Result<()> {
    while left.load(Ordering::Acquire) > 0 {
        let got = queue
            .receive(
                name,
                ReceiveRequest::new(batch).wait(Duration::from_millis(200)),
            )
            .await?;
        if got.is_empty() {
            continue;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
        queue.delete_batch(name, &receipts).await?;
        left.fetch_sub(got.len(), Ordering::AcqRel);
    }
    Ok(())
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
}

//! `nimbus bench jobs`: how long the job listing and the job counts take on a store of N jobs,
//! by page and counters, beside reading every record (what they did before).

use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_core::{Condition, Engine, ItemKey, JobState};
use nimbus_workloads::jobs::JobStore;

/// One figure: what was timed, and the median of its runs.
#[derive(Debug, Clone)]
pub struct JobsFigure {
    /// What was timed.
    pub what: &'static str,
    /// The median run.
    pub median: Duration,
}

async fn timed<F, T>(runs: usize, mut f: impl FnMut() -> F) -> Result<Duration, String>
where
    F: std::future::Future<Output = nimbus_core::Result<T>>,
{
    let mut seconds = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        f().await.map_err(|e| e.to_string())?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(crate::median(&mut seconds)))
}

/// Writes `count` job records into `engine` (as a store that has run that many jobs), then
/// times each way of listing and counting them, `runs` times each.
pub async fn run(engine: Engine, count: usize, runs: usize) -> Result<Vec<JobsFigure>, String> {
    let store = JobStore::new(engine.clone());
    store.prepare(&[]).await.map_err(|e| e.to_string())?;
    let mut cursor_at = None;
    for chunk_start in (0..count).step_by(5000) {
        let mut batch = Vec::new();
        for i in chunk_start..(chunk_start + 5000).min(count) {
            let job = JobStore::new_job("atoms", serde_json::json!({ "grid_size": 1 }), 1);
            if i == count / 2 {
                cursor_at = Some(job.id.clone());
            }
            let key = ItemKey::new("jobs", &job.id).map_err(|e| e.to_string())?;
            let value = Bytes::from(serde_json::to_vec(&job).map_err(|e| e.to_string())?);
            batch.push((key, value, Condition::Absent));
        }
        engine
            .ledger
            .put_batch(batch)
            .await
            .map_err(|e| e.to_string())?;
    }
    let middle = cursor_at.unwrap_or_default();
    let ledger = engine.ledger.clone();
    Ok(vec![
        JobsFigure {
            what: "first page of 50, newest first (`GET /api/v1/jobs`)",
            median: timed(runs, || store.page(50, None)).await?,
        },
        JobsFigure {
            what: "a page of 50 from a cursor halfway down",
            median: timed(runs, || store.page(50, Some(middle.as_str()))).await?,
        },
        JobsFigure {
            what: "counts by state (`/metrics`)",
            median: timed(runs, || store.count_by_state()).await?,
        },
        JobsFigure {
            what: "before: reading every record (what listing and counting did)",
            median: timed(runs, || {
                let ledger = ledger.clone();
                async move {
                    let all = ledger.list("jobs").await?;
                    let mut counts = [0u64; 5];
                    for (_, item) in &all {
                        let job: nimbus_core::Job = serde_json::from_slice(&item.value)
                            .map_err(|e| nimbus_core::Error::internal(e.to_string()))?;
                        let i = JobState::ALL
                            .iter()
                            .position(|s| *s == job.state)
                            .unwrap_or(0);
                        counts[i] += 1;
                    }
                    Ok(counts)
                }
            })
            .await?,
        },
    ])
}

//! `nimbus bench tasks`: seed 002's experiments. Efficiency of 1 to 16 concurrency slots on
//! workloads of equal total work, and end-to-end throughput of no-op tasks through worker
//! processes on the embedded engine, beside the local thread pool.

use std::path::Path;
use std::time::{Duration, Instant};

use nimbus_core::{Engine, QueueName, Result};
use nimbus_scale::process::ProcessSet;
use nimbus_worker::{Handlers, Worker, WorkerConfig};
use nimbus_workloads::sessions;
use nimbus_workloads::tasks::{
    ExecPolicy, TaskHandler, TaskSpec, KIND, RESULTS_QUEUE, TASKS_QUEUE,
};
use tokio_util::sync::CancellationToken;

/// A workload: `count` tasks of `sleep ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Tasks.
    pub count: usize,
    /// Milliseconds each task sleeps.
    pub ms: u64,
}

impl Workload {
    /// The workload's lines.
    pub fn lines(&self) -> Vec<String> {
        vec![format!("sleep {}", self.ms); self.count]
    }

    /// The least time `slots` slots can take: whole waves of tasks.
    pub fn ideal(&self, slots: usize) -> Duration {
        let waves = self.count.div_ceil(slots.max(1)) as u64;
        Duration::from_millis(waves * self.ms)
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ms >= 1000 && self.ms.is_multiple_of(1000) {
            write!(f, "{}s x {}", self.ms / 1000, self.count)
        } else {
            write!(f, "{}ms x {}", self.ms, self.count)
        }
    }
}

fn queues() -> Result<(QueueName, QueueName)> {
    Ok((QueueName::new(TASKS_QUEUE)?, QueueName::new(RESULTS_QUEUE)?))
}

/// Creates the task and result queues.
pub async fn prepare(engine: &Engine) -> Result<()> {
    let (tasks, results) = queues()?;
    sessions::ensure_queue(engine, &tasks).await?;
    sessions::ensure_queue(engine, &results).await
}

/// Submits `lines` and collects reports until every task is reported: the end-to-end time.
pub async fn submit_and_wait(engine: &Engine, lines: &[String]) -> Result<Duration> {
    let (tasks, results) = queues()?;
    let started = Instant::now();
    let session = sessions::submit(engine, &tasks, &results, lines, |_| {}).await?;
    let mut reported = 0;
    while reported < lines.len() {
        reported += sessions::collect_reports(engine, &results, Duration::from_millis(200)).await?;
    }
    let elapsed = started.elapsed();
    let summary = sessions::summarize(engine, &session.id).await?;
    if !summary.complete() || summary.failed > 0 {
        return Err(nimbus_core::Error::internal(format!(
            "benchmark session incomplete or failed: {summary:?}"
        )));
    }
    Ok(elapsed)
}

/// One run of `workload` on an in-process worker with `slots` concurrency slots.
pub async fn in_process(engine: Engine, slots: usize, lines: &[String]) -> Result<Duration> {
    prepare(&engine).await?;
    let (tasks, _) = queues()?;
    let config = WorkerConfig {
        worker_id: format!("bench-{slots}"),
        queues: vec![tasks],
        concurrency: slots,
        poll_wait: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        engine.clone(),
        Handlers::default().with(KIND, TaskHandler::new(ExecPolicy::default())),
        config,
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let elapsed = submit_and_wait(&engine, lines).await;
    stop.cancel();
    running
        .await
        .map_err(|e| nimbus_core::Error::internal("worker task failed").with_source(e))??;
    elapsed
}

/// Worker processes of the `nimbus` binary at `exe` on the database at `db`, on the one process
/// supervisor the local compute provider uses; stopped on drop.
pub struct WorkerProcesses {
    _processes: ProcessSet,
}

impl WorkerProcesses {
    /// Starts `count` workers with `concurrency` slots each and the further worker arguments
    /// `extra`.
    pub fn start(
        exe: &Path,
        db: &Path,
        count: usize,
        concurrency: usize,
        extra: &[String],
    ) -> std::io::Result<Self> {
        let engine = format!("sqlite://{}", db.display());
        let set = ProcessSet::start(exe, count, Duration::from_secs(5), |i| {
            let mut args = [
                "--engine",
                &engine,
                "worker",
                "--concurrency",
                &concurrency.to_string(),
                "--worker-id",
                &format!("bench-{i}"),
                "--grace",
                "1s",
            ]
            .map(String::from)
            .to_vec();
            args.extend_from_slice(extra);
            args
        })?;
        Ok(Self { _processes: set })
    }
}

/// The local thread pool on `count` no-op tasks.
pub fn local_pool(threads: usize, count: usize) -> Duration {
    let specs = vec![TaskSpec::Sleep(Duration::ZERO); count];
    nimbus_workloads::tasks::run_pool(&specs, threads, &ExecPolicy::default()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_time_counts_whole_waves() {
        let w = Workload {
            count: 10,
            ms: 1000,
        };
        assert_eq!(w.ideal(1), Duration::from_secs(10));
        assert_eq!(w.ideal(4), Duration::from_secs(3));
        assert_eq!(w.ideal(16), Duration::from_secs(1));
        assert_eq!(w.to_string(), "1s x 10");
        assert_eq!(
            Workload {
                count: 1000,
                ms: 10
            }
            .to_string(),
            "10ms x 1000"
        );
    }
}

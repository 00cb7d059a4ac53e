//! `nimbus worker`: the worker runtime as a process, with the task handler registered.

use anyhow::Context;
use nimbus_core::QueueName;
use nimbus_worker::{Handlers, Worker, WorkerConfig};
use nimbus_workloads::jobs::JobStore;
use nimbus_workloads::kinds::{self, WorkerOptions};
use nimbus_workloads::tasks::ExecPolicy;
use nimbus_workloads::video::VideoOptions;

use crate::args::{EngineArgs, ModelArgs, WorkerArgs};
use crate::engine_url;

pub async fn run(engine: &EngineArgs, args: WorkerArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    if args.exit_with_parent {
        stop_with_parent(shutdown.clone());
    }
    let engine = engine_url::open(engine).await?;
    let policy = match &args.allow_exec {
        Some(pattern) => ExecPolicy::allow(pattern).map_err(anyhow::Error::msg)?,
        None => ExecPolicy::default(),
    };
    let queues = args
        .queues
        .iter()
        .map(|q| QueueName::new(q.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    for q in &queues {
        engine
            .queue
            .queue_options(q)
            .await
            .with_context(|| format!("cannot work on queue `{q}`"))?;
    }
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.claim_retention >= std::time::Duration::from_secs(1),
        "--claim-retention must be at least 1s"
    );
    let config = WorkerConfig {
        worker_id: args.worker_id.unwrap_or_else(default_worker_id),
        queues,
        concurrency: args.concurrency,
        batch: args.batch,
        visibility: args.visibility,
        grace: args.grace,
        exit_when_idle: args.exit_when_idle,
        dedup: !args.no_dedup,
        max_crashes: args.max_crashes,
        free_slot: args.free_slot,
        sweep: Some(nimbus_worker::sweep::SweepConfig {
            retention: args.claim_retention,
            ..Default::default()
        }),
        ..WorkerConfig::default()
    };
    let classify = args
        .queues
        .iter()
        .any(|q| q == nimbus_workloads::classify::REQUESTS);
    let video = crate::cmd::video::options(&args.video)?;
    let handlers = all_handlers(&engine, policy, video, &args.model, classify)?;
    let id = config.worker_id.clone();
    let stats = Worker::new(engine, handlers, config).run(shutdown).await?;
    eprintln!(
        "worker {id} stopped: {} succeeded, {} failed, {} retried, {} duplicates skipped, {} released",
        stats.succeeded, stats.failed, stats.retried, stats.duplicates, stats.released
    );
    Ok(())
}

/// Fires `shutdown` once the process that started this one has ended (its children are then
/// adopted by another process, so the parent id changes).
fn stop_with_parent(shutdown: tokio_util::sync::CancellationToken) {
    let parent = std::os::unix::process::parent_id();
    if parent == 1 {
        // Adopted by init already: the process that started this one is gone.
        tracing::warn!("started by a process that has already ended; stopping");
        shutdown.cancel();
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!(
                    parent,
                    "the process that started this worker has ended; stopping"
                );
                shutdown.cancel();
                return;
            }
        }
    });
}

/// Every job kind's handlers (`kinds::handlers`); with `classify` (and a build that has it),
/// image classification too, its model loaded once, here.
pub fn all_handlers(
    engine: &nimbus_core::Engine,
    exec: ExecPolicy,
    video: VideoOptions,
    model: &ModelArgs,
    classify: bool,
) -> anyhow::Result<Handlers> {
    let store = JobStore::new(engine.clone());
    let options = WorkerOptions {
        exec,
        video,
        #[cfg(feature = "classify")]
        classifier: if classify {
            Some(load_classifier(model)?)
        } else {
            None
        },
    };
    #[cfg(not(feature = "classify"))]
    if classify {
        let _ = model;
        anyhow::bail!(
            "this nimbus was built without image classification (cargo feature `classify`)"
        );
    }
    kinds::handlers(&store, &options).map_err(anyhow::Error::msg)
}

#[cfg(feature = "classify")]
fn load_classifier(
    model: &ModelArgs,
) -> anyhow::Result<std::sync::Arc<nimbus_workloads::classify::model::Classifier>> {
    let started = std::time::Instant::now();
    let (model, labels) = model
        .resolve()
        .map_err(|e| anyhow::anyhow!("{e} (pass --model and --labels)"))?;
    let classifier = nimbus_workloads::classify::model::Classifier::load(&model, &labels)
        .map_err(|e| anyhow::anyhow!("{e} (pass --model and --labels)"))?;
    tracing::info!(model = %model.display(), took = ?started.elapsed(), "image model loaded");
    Ok(std::sync::Arc::new(classifier))
}

pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "local".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

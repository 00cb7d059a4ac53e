//! The platform the web tier's tests run on: a fresh embedded engine, the web state with its
//! event pump, and optionally an in-process worker; everything stops when it is dropped.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use axum::Router;
use nimbus_core::{DeadLetter, Engine, QueueName, QueueOptions};
use nimbus_web::{router, AppState, WebConfig};
use nimbus_worker::{Handlers, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

pub struct Platform {
    pub app: Router,
    pub engine: Engine,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A worker to run beside the web tier: its handlers (made over the platform's engine), its
/// queues and its slots.
pub struct WorkerSpec<'a> {
    pub handlers: &'a dyn Fn(&Engine) -> Handlers,
    pub queues: &'a [&'a str],
    pub concurrency: usize,
}

/// The web tier with `config`, and the worker `worker` describes, if any.
pub async fn platform(config: WebConfig, worker: Option<WorkerSpec<'_>>) -> Platform {
    platform_with_dead_letters(config, worker, &[]).await
}

/// [`platform`], where each of `dead_lettered` (a queue, its `max_receives`) is made first with
/// a dead-letter queue (`<queue>-dead`).
pub async fn platform_with_dead_letters(
    config: WebConfig,
    worker: Option<WorkerSpec<'_>>,
    dead_lettered: &[(&str, u32)],
) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let engine = nimbus_sqlite::SqliteEngine::open(dir.path().join("db"), Default::default())
        .unwrap()
        .into_engine(dir.path().join("blobs"))
        .unwrap();
    for (queue, max_receives) in dead_lettered {
        let dead = QueueName::new(format!("{queue}-dead")).unwrap();
        engine
            .queue
            .create_queue(&dead, &QueueOptions::default())
            .await
            .unwrap();
        let options = QueueOptions {
            dead_letter: Some(DeadLetter {
                queue: dead,
                max_receives: *max_receives,
            }),
            ..QueueOptions::default()
        };
        let queue = QueueName::new(*queue).unwrap();
        engine.queue.create_queue(&queue, &options).await.unwrap();
    }
    let stop = CancellationToken::new();
    let state = AppState::new(engine.clone(), config);
    state.start(stop.clone()).await.unwrap();
    let platform = Platform {
        app: router(state),
        engine,
        stop,
        _dir: dir,
    };
    if let Some(spec) = worker {
        platform.start_worker(spec);
    }
    platform
}

impl Platform {
    /// Starts the worker `spec` describes, until the platform is dropped.
    pub fn start_worker(&self, spec: WorkerSpec<'_>) {
        let handlers = (spec.handlers)(&self.engine);
        let config = WorkerConfig {
            queues: spec
                .queues
                .iter()
                .map(|q| QueueName::new(*q).unwrap())
                .collect(),
            concurrency: spec.concurrency,
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        };
        let worker = Worker::new(self.engine.clone(), handlers, config);
        tokio::spawn(worker.run(self.stop.clone()));
    }
}

//! The platform the web tier's tests run on: a fresh embedded engine, the web state with its
//! event pump, and optionally an in-process worker; everything stops when it is dropped.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use axum::Router;
use nimbus_core::{Engine, QueueName};
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
    let dir = tempfile::tempdir().unwrap();
    let engine = nimbus_sqlite::SqliteEngine::open(dir.path().join("db"), Default::default())
        .unwrap()
        .into_engine(dir.path().join("blobs"))
        .unwrap();
    let stop = CancellationToken::new();
    let state = AppState::new(engine.clone(), config);
    state.start(stop.clone()).await.unwrap();
    if let Some(spec) = worker {
        let handlers = (spec.handlers)(&engine);
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
        tokio::spawn(Worker::new(engine.clone(), handlers, config).run(stop.clone()));
    }
    Platform {
        app: router(state),
        engine,
        stop,
        _dir: dir,
    }
}

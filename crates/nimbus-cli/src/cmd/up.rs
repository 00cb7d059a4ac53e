//! `nimbus up` (the whole platform in one process) and `nimbus web` (the web tier alone).

use std::time::Duration;

use anyhow::Context;
use nimbus_core::{Engine, QueueName};
use nimbus_web::{AppState, WebConfig};
use nimbus_worker::{Worker, WorkerConfig};
use nimbus_workloads::atoms::{self, Limits};
use nimbus_workloads::tasks::{ExecPolicy, TASKS_QUEUE};
use tokio_util::sync::CancellationToken;

use crate::args::{EngineArgs, UpArgs, WebArgs};
use crate::cmd::worker::{all_handlers, default_worker_id};
use crate::engine_url;

async fn listen(args: &WebArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let address = format!("{}:{}", args.bind, args.port);
    tokio::net::TcpListener::bind(&address).await.with_context(|| {
        format!("cannot listen on {address} (is another nimbus running? pass --port N, or --port 0 for any free port)")
    })
}

/// The replica's event pump; it ends once its queue is removed at shutdown.
type Pump = tokio::task::JoinHandle<()>;

async fn start_web(
    engine: &Engine,
    args: &WebArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<(AppState, tokio::net::TcpListener, Pump)> {
    let limits = Limits {
        max_grid: args.max_grid,
        max_atoms: args.max_atoms,
        max_work: args.max_work,
    };
    let state = AppState::new(
        engine.clone(),
        WebConfig {
            limits,
            ..WebConfig::default()
        },
    );
    let listener = listen(args).await?;
    let pump = state.start(shutdown.clone()).await?;
    Ok((state, listener, pump))
}

fn announce(listener: &tokio::net::TcpListener, what: &str) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    println!("http://{address}/");
    eprintln!("nimbus{what} is up: open http://{address}/ in a browser (Ctrl-C stops it)");
    Ok(())
}

pub async fn web(engine: &EngineArgs, args: WebArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    let engine = engine_url::open(engine).await?;
    let (state, listener, pump) = start_web(&engine, &args, &shutdown).await?;
    announce(&listener, " web tier")?;
    nimbus_web::serve(listener, state, shutdown).await?;
    pump.await?;
    Ok(())
}

pub async fn up(engine: &EngineArgs, args: UpArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    let engine = engine_url::open(engine).await?;
    let (state, listener, pump) = start_web(&engine, &args.web, &shutdown).await?;
    nimbus_workloads::sessions::ensure_queue(&engine, &QueueName::new(TASKS_QUEUE)?).await?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = WorkerConfig {
        worker_id: format!("up-{}", default_worker_id()),
        queues: [
            atoms::GENERATE,
            atoms::SOLVE,
            nimbus_workloads::classify::REQUESTS,
            TASKS_QUEUE,
        ]
        .into_iter()
        .map(QueueName::new)
        .collect::<Result<_, _>>()?,
        concurrency: args.solvers.unwrap_or(cores).max(1) + 1,
        visibility: Duration::from_secs(10),
        poll_wait: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    let handlers = match all_handlers(&engine, ExecPolicy::default(), &args.model, true) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("warning: image recognition is off: {e:#}");
            all_handlers(&engine, ExecPolicy::default(), &args.model, false)?
        }
    };
    let worker = Worker::new(engine.clone(), handlers, config);
    let workers = tokio::spawn(worker.run(shutdown.clone()));
    announce(&listener, "")?;
    nimbus_web::serve(listener, state, shutdown.clone()).await?;
    shutdown.cancel();
    workers.await??;
    pump.await?;
    eprintln!("nimbus stopped; unfinished jobs resume on the next `nimbus up`");
    Ok(())
}

//! `nimbus up` (the whole platform from one command: web tier, atoms pipeline, and the app
//! tier of image recognition and tasks scaled by the autoscaler) and `nimbus web` (the web tier
//! alone).

use std::time::Duration;

use anyhow::Context;
use nimbus_core::{Engine, LaunchSpec, QueueName};
use nimbus_scale::AutoscalerConfig;
use nimbus_web::{AppState, WebConfig};
use nimbus_worker::{Worker, WorkerConfig};
use nimbus_workloads::atoms::Limits;
use nimbus_workloads::kinds::{self, Tier};
use nimbus_workloads::tasks::ExecPolicy;
use tokio_util::sync::CancellationToken;

use crate::args::{EngineArgs, ModelArgs, UpArgs, WebArgs};
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
    classify_off: Option<String>,
) -> anyhow::Result<(AppState, tokio::net::TcpListener, Pump)> {
    let limits = Limits {
        max_grid: args.max_grid,
        max_atoms: args.max_atoms,
        max_work: args.max_work,
    };
    let instance = match &args.cluster_path {
        Some(path) => Some(nimbus_web::Instance {
            path: cluster_path(path)?,
            id: args.instance_id.clone().unwrap_or_else(default_worker_id),
        }),
        None => None,
    };
    let state = AppState::new(
        engine.clone(),
        WebConfig {
            limits,
            replica: format!("web-{}", queue_safe(&default_worker_id())),
            classify_off,
            instance,
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
    let (state, listener, pump) = start_web(&engine, &args, &shutdown, None).await?;
    announce(&listener, " web tier")?;
    nimbus_web::serve(listener, state, shutdown).await?;
    pump.await?;
    Ok(())
}

/// `path` when it can be a cluster's path: `/` and then letters, digits, `-`, `_`, `.` or `/`.
fn cluster_path(path: &str) -> anyhow::Result<String> {
    let ok = path.len() > 1
        && path.len() <= 128
        && path.starts_with('/')
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    anyhow::ensure!(
        ok,
        "--cluster-path `{path}`: `/` and then letters, digits, `-`, `_`, `.` or `/` (at most 128)"
    );
    anyhow::ensure!(
        !nimbus_web::serves(path),
        "--cluster-path `{path}` is a path the web tier serves itself: pick another, such as /cluster1"
    );
    Ok(path.to_string())
}

/// `name` with every character a queue name may not hold as `-`, at most 60 characters.
fn queue_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect()
}

/// The image model for the app tier's workers, or why image recognition is off.
pub(crate) fn model_for_workers(model: &ModelArgs) -> Result<Vec<String>, String> {
    if !cfg!(feature = "classify") {
        return Err(
            "this nimbus was built without image classification (cargo feature `classify`)".into(),
        );
    }
    let (model, labels) = model.resolve()?;
    check_model(&model, &labels)?;
    Ok(vec![
        "--model".to_string(),
        model.display().to_string(),
        "--labels".to_string(),
        labels.display().to_string(),
    ])
}

/// Loads the model once, so that workers are not started on one they cannot load.
#[cfg(feature = "classify")]
fn check_model(model: &std::path::Path, labels: &std::path::Path) -> Result<(), String> {
    nimbus_workloads::classify::model::Classifier::load(model, labels).map(drop)
}

#[cfg(not(feature = "classify"))]
fn check_model(_: &std::path::Path, _: &std::path::Path) -> Result<(), String> {
    Ok(())
}

pub async fn up(engine_args: &EngineArgs, args: UpArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    let engine = engine_url::open(engine_args).await?;
    let model = model_for_workers(&args.model);
    if let Err(reason) = &model {
        eprintln!("warning: image recognition is off: {reason} (pass --model and --labels)");
    }
    let (state, listener, pump) =
        start_web(&engine, &args.web, &shutdown, model.as_ref().err().cloned()).await?;
    let atoms_pipeline = tokio::spawn(atoms_worker(&engine, &args)?.run(shutdown.clone()));
    let tier =
        tokio::spawn(app_tier(engine.clone(), engine_args, &args, model, shutdown.clone()).await?);
    announce(&listener, "")?;
    nimbus_web::serve(listener, state, shutdown.clone()).await?;
    shutdown.cancel();
    atoms_pipeline.await??;
    tier.await??;
    pump.await?;
    eprintln!("nimbus stopped; unfinished jobs resume on the next `nimbus up`");
    Ok(())
}

/// The atom generator and solvers, in this process (one solver per core).
fn atoms_worker(engine: &Engine, args: &UpArgs) -> anyhow::Result<Worker> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = WorkerConfig {
        worker_id: format!("up-{}", default_worker_id()),
        queues: kinds::queues_of(Tier::Platform)
            .into_iter()
            .map(QueueName::new)
            .collect::<Result<_, _>>()?,
        concurrency: args.solvers.unwrap_or(cores).max(1) + 1,
        visibility: Duration::from_secs(10),
        poll_wait: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    let handlers = all_handlers(
        engine,
        ExecPolicy::default(),
        crate::cmd::video::options(&args.video)?,
        &args.model,
        false,
    )?;
    Ok(Worker::new(engine.clone(), handlers, config))
}

/// Image recognition and tasks: `nimbus worker` processes on this machine, as many as the
/// autoscaler decides (a warm minimum, at most one per core by default).
async fn app_tier(
    engine: Engine,
    engine_args: &EngineArgs,
    args: &UpArgs,
    model: Result<Vec<String>, String>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    let mut extra_args = vec!["--exit-with-parent".to_string()];
    extra_args.extend(crate::cmd::video::forward(&args.video));
    let classify = model.is_ok();
    if let Ok(model_args) = model {
        extra_args.extend(model_args);
    }
    // Every app-tier kind's queues; image recognition's only with a model to run.
    let queues: Vec<String> = kinds::queues_of(Tier::App)
        .into_iter()
        .filter(|q| classify || !kinds::CLASSIFY.queues.contains(q))
        .map(str::to_string)
        .collect();
    let names = queues
        .iter()
        .map(|q| QueueName::new(q.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    for q in &names {
        nimbus_workloads::sessions::ensure_queue(&engine, q).await?;
    }
    anyhow::ensure!(
        args.worker_concurrency >= 1,
        "--worker-concurrency must be at least 1"
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let defaults = (1, u32::try_from(cores).unwrap_or(u32::MAX));
    let policy =
        crate::cmd::autoscale::policy(&args.scale, args.worker_concurrency, Some(defaults))?;
    let spec = LaunchSpec {
        engine: engine_args.engine.clone(),
        blobs: engine_args.blobs.clone(),
        queues,
        concurrency: args.worker_concurrency,
        exit_when_idle: policy.self_stop(),
        extra_args,
    };
    let local = crate::cmd::autoscale::local_provider()?;
    let config = AutoscalerConfig {
        queues: names,
        spec,
        interval: args.scale.interval,
    };
    Ok(crate::cmd::autoscale::run_loop(
        engine,
        local.clone(),
        Some(local),
        policy,
        config,
        shutdown,
    ))
}

//! `nimbus autoscale`, and the app tier `nimbus up` scales: the autoscaling loop over a compute
//! provider (worker processes on this machine, or EC2).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nimbus_core::{ComputeProvider, Engine, LaunchSpec, QueueName};
use nimbus_scale::policy::{self, Policy, Tuning};
use nimbus_scale::{Autoscaler, AutoscalerConfig, LocalProvider};
use tokio_util::sync::CancellationToken;

use crate::args::{AutoscaleArgs, EngineArgs, ScaleArgs};
use crate::engine_url;

/// How long a local worker has, after SIGTERM, before it is killed: its grace period (10 s by
/// default) and a margin.
const LOCAL_GRACE: Duration = Duration::from_secs(15);

/// The policy `scale` names, for workers of `concurrency` slots; `defaults` (min, max) where
/// the flags say nothing, else the policy's own.
pub fn policy(
    scale: &ScaleArgs,
    concurrency: usize,
    defaults: Option<(u32, u32)>,
) -> anyhow::Result<Box<dyn Policy>> {
    let min = scale.min.or(defaults.map(|d| d.0));
    let max = scale.max.or(defaults.map(|d| d.1));
    anyhow::ensure!(max != Some(0), "--max must be at least 1");
    if let (Some(min), Some(max)) = (min, max) {
        anyhow::ensure!(min <= max, "--min {min} is over --max {max}");
    }
    anyhow::ensure!(!scale.interval.is_zero(), "--interval must be more than 0");
    if let Some(p) = scale.per_instance {
        anyhow::ensure!(
            p > 0.0 && p.is_finite(),
            "--per-instance must be a positive number"
        );
    }
    let tuning = Tuning {
        min,
        max,
        idle: Some(scale.idle),
        per_instance: Some(scale.per_instance.unwrap_or(concurrency.max(1) as f64)),
    };
    policy::by_name(&scale.policy, &tuning).with_context(|| {
        format!(
            "no policy `{}`; the policies are {}",
            scale.policy,
            policy::NAMES.join(", ")
        )
    })
}

/// Local workers of this process: their ids start with this host's name and pid, so two
/// autoscalers (or two hosts) never share one.
pub fn local_provider() -> anyhow::Result<Arc<LocalProvider>> {
    let exe = std::env::current_exe()
        .context("cannot find the nimbus executable to start workers from")?;
    Ok(Arc::new(LocalProvider::new(
        exe,
        format!("w-{}", crate::cmd::worker::default_worker_id()),
        LOCAL_GRACE,
    )))
}

/// Runs the loop until `shutdown` fires; then stops what a local provider launched.
pub async fn run_loop(
    engine: Engine,
    provider: Arc<dyn ComputeProvider>,
    local: Option<Arc<LocalProvider>>,
    policy: Box<dyn Policy>,
    config: AutoscalerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Autoscaler::new(engine, provider, policy, config)
        .run(shutdown)
        .await;
    if let Some(local) = local {
        tokio::task::spawn_blocking(move || local.shutdown()).await?;
    }
    Ok(())
}

async fn checked_queues(engine: &Engine, names: &[String]) -> anyhow::Result<Vec<QueueName>> {
    let mut queues = Vec::new();
    for name in names {
        let q = QueueName::new(name.as_str())?;
        engine
            .queue
            .queue_options(&q)
            .await
            .with_context(|| format!("cannot watch queue `{q}`"))?;
        queues.push(q);
    }
    Ok(queues)
}

pub async fn run(engine_args: &EngineArgs, args: AutoscaleArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    let engine = engine_url::open(engine_args).await?;
    let queues = checked_queues(&engine, &args.queues).await?;
    anyhow::ensure!(
        args.worker_concurrency >= 1,
        "--worker-concurrency must be at least 1"
    );
    let policy = policy(&args.scale, args.worker_concurrency, None)?;
    let mut extra_args = args.worker_args.clone();
    let (provider, local): (Arc<dyn ComputeProvider>, _) = match args.provider.as_str() {
        "local" => {
            extra_args.push("--exit-with-parent".to_string());
            let local = local_provider()?;
            (local.clone(), Some(local))
        }
        "ec2" => (ec2_provider(engine_args, &args).await?, None),
        other => anyhow::bail!("no provider `{other}`; the providers are local and ec2"),
    };
    let spec = LaunchSpec {
        engine: args
            .worker_engine
            .clone()
            .unwrap_or_else(|| engine_args.engine.clone()),
        blobs: engine_args.blobs.clone(),
        queues: args.queues.clone(),
        concurrency: args.worker_concurrency,
        exit_when_idle: policy.self_stop(),
        extra_args,
    };
    eprintln!(
        "autoscaling {} with the {} policy on {} instances, every {:?} (Ctrl-C stops it)",
        args.queues.join(", "),
        policy.name(),
        args.provider,
        args.scale.interval
    );
    let config = AutoscalerConfig {
        queues,
        spec,
        interval: args.scale.interval,
    };
    run_loop(engine, provider, local, policy, config, shutdown).await
}

#[cfg(feature = "ec2")]
async fn ec2_provider(
    engine_args: &EngineArgs,
    args: &AutoscaleArgs,
) -> anyhow::Result<Arc<dyn ComputeProvider>> {
    use nimbus_aws::ec2::{Ec2Provider, Machine, USER_DATA};
    let image = args
        .image
        .clone()
        .context("--provider ec2 needs --image AMI (the worker image; see docs/aws.md)")?;
    let aws = engine_url::aws_engine(engine_args)
        .await?
        .context("--provider ec2 needs an aws:// engine")?;
    let deployment = args
        .deployment
        .clone()
        .unwrap_or_else(|| aws.clients().prefix.clone());
    let machine = Machine {
        image,
        instance_type: args.instance_type.clone(),
        profile: args.profile.clone(),
        user_data: USER_DATA.to_string(),
    };
    Ok(Arc::new(Ec2Provider::new(&aws, deployment, machine)))
}

#[cfg(not(feature = "ec2"))]
async fn ec2_provider(
    _: &EngineArgs,
    _: &AutoscaleArgs,
) -> anyhow::Result<Arc<dyn ComputeProvider>> {
    anyhow::bail!("this nimbus was built without the EC2 provider (cargo feature `ec2`)")
}

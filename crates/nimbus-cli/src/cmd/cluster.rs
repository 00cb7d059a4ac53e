//! `nimbus cluster up`: seed 003's deployment on one machine: clusters of `nimbus web` replicas
//! (each answering its instance id on its cluster's path) and the load balancer in front with a
//! rule per cluster; Ctrl-C stops the balancer, then the replicas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use nimbus_lb::config::{Action, Balance, GroupConfig, ListenerConfig, Rule};
use nimbus_lb::{Balancer, Config};
use nimbus_scale::process::{ProcessSpec, Supervised};

use crate::args::{ClusterUpArgs, EngineArgs};

/// A replica started for the cluster.
struct Replica {
    id: String,
    addr: SocketAddr,
    process: Supervised,
    log: std::path::PathBuf,
}

pub async fn up(engine: &EngineArgs, args: ClusterUpArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    anyhow::ensure!(
        (1..=16).contains(&args.clusters) && (1..=64).contains(&args.replicas),
        "--clusters must be 1 to 16 and --replicas 1 to 64"
    );
    let balance: Balance = args.balance.parse()?;
    let logs = std::env::temp_dir().join(format!("nimbus-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut replicas = Vec::new();
    let started = start_replicas(engine, &args, &logs, &mut replicas);
    let result = match started {
        Ok(()) => serve(&args, balance, &replicas, &logs, shutdown.clone()).await,
        Err(e) => Err(e),
    };
    for r in &mut replicas {
        r.process.ask_to_stop();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for r in &mut replicas {
        r.process.stop_by(deadline);
    }
    eprintln!(
        "nimbus cluster stopped (replica logs in {})",
        logs.display()
    );
    result
}

fn start_replicas(
    engine: &EngineArgs,
    args: &ClusterUpArgs,
    logs: &std::path::Path,
    replicas: &mut Vec<Replica>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the nimbus executable")?;
    for c in 1..=args.clusters {
        for r in 1..=args.replicas {
            let id = format!("cluster{c}-{r}");
            let port = free_port(args.bind)?;
            let mut spec = ProcessSpec::new(
                &exe,
                vec![
                    "web".into(),
                    "--bind".into(),
                    args.bind.to_string(),
                    "--port".into(),
                    port.to_string(),
                    "--cluster-path".into(),
                    format!("/cluster{c}"),
                    "--instance-id".into(),
                    id.clone(),
                ],
            );
            spec.env
                .push(("NIMBUS_ENGINE".into(), engine.engine.clone()));
            if let Some(blobs) = &engine.blobs {
                spec.env.push(("NIMBUS_BLOBS".into(), blobs.clone()));
            }
            let log = logs.join(format!("{id}.log"));
            spec.log = Some(log.clone());
            let process =
                Supervised::spawn(&spec).with_context(|| format!("cannot start replica {id}"))?;
            replicas.push(Replica {
                id,
                addr: SocketAddr::new(args.bind, port),
                process,
                log,
            });
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in replicas.iter_mut() {
        while std::net::TcpStream::connect_timeout(&r.addr, Duration::from_millis(200)).is_err() {
            if !r.process.running() || Instant::now() > deadline {
                let tail = std::fs::read_to_string(&r.log).unwrap_or_default();
                anyhow::bail!(
                    "replica {} did not start on {}: {}",
                    r.id,
                    r.addr,
                    tail.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// A port free now on `ip` (the replica binds it a moment later).
fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    let probe =
        std::net::TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}"))?;
    Ok(probe.local_addr()?.port())
}

/// The balancer's configuration: a group and two rules per cluster, all replicas by default.
fn layout(args: &ClusterUpArgs, balance: Balance, replicas: &[Replica]) -> Config {
    let group = |targets: Vec<String>| GroupConfig {
        targets,
        balance,
        ..GroupConfig::default()
    };
    let mut groups = BTreeMap::new();
    let mut rules = Vec::new();
    for c in 1..=args.clusters {
        let name = format!("cluster{c}");
        let prefix = format!("{name}-");
        let targets = replicas
            .iter()
            .filter(|r| r.id.starts_with(&prefix))
            .map(|r| r.addr.to_string())
            .collect();
        groups.insert(name.clone(), group(targets));
        for path in [format!("/{name}"), format!("/{name}/*")] {
            rules.push(Rule {
                path,
                group: name.clone(),
            });
        }
    }
    groups.insert(
        "all".into(),
        group(replicas.iter().map(|r| r.addr.to_string()).collect()),
    );
    Config {
        listeners: vec![ListenerConfig {
            bind: SocketAddr::new(args.bind, args.port),
            tls: None,
        }],
        admin: Some(SocketAddr::new(args.bind, args.admin_port)),
        rules,
        default_action: Some(Action::Forward {
            group: "all".into(),
        }),
        groups,
        limits: nimbus_lb::config::Limits::default(),
    }
}

async fn serve(
    args: &ClusterUpArgs,
    balance: Balance,
    replicas: &[Replica],
    logs: &std::path::Path,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let lb = Balancer::new(layout(args, balance, replicas), shutdown)?;
    let (listeners, admin) = lb
        .open()
        .await
        .context("pass --port N, or --port 0 for any free port")?;
    crate::cmd::lb::announce(&listeners, admin.as_ref())?;
    let url = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()?
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    eprintln!(
        "nimbus cluster is up: {} clusters of {} replicas behind {url}/cluster1 .. /cluster{} (logs in {}); Ctrl-C stops it",
        args.clusters,
        args.replicas,
        args.clusters,
        logs.display()
    );
    lb.serve(listeners, admin).await?;
    Ok(())
}

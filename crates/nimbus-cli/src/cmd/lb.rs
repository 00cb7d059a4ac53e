//! `nimbus lb`: the load balancer from a TOML file or the flags' simple case, reloaded on
//! SIGHUP, stopped gracefully on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use nimbus_lb::config::{Balance, ListenerConfig, TlsFiles, SIMPLE_GROUP};
use nimbus_lb::{Balancer, Config};

use crate::args::LbArgs;

pub async fn run(args: LbArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_on_signals();
    let hangups = hangups();
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => simple(&args)?,
    };
    let lb = Balancer::new(config.clone(), shutdown.clone())?;
    let (listeners, admin) = lb.open().await?;
    announce(&listeners, admin.as_ref())?;
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup(lb.clone(), args.config.clone(), hangups));
    }
    lb.serve(listeners, admin).await?;
    eprintln!("nimbus lb stopped");
    Ok(())
}

/// The flags' configuration: one listener, one group of the targets, every path to it.
fn simple(args: &LbArgs) -> anyhow::Result<Config> {
    anyhow::ensure!(
        !args.targets.is_empty(),
        "no target: pass --target HOST:PORT (repeatable), or --config FILE"
    );
    let mut config = Config::simple(args.listen, args.targets.clone());
    config.admin = args.admin;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.listeners = vec![ListenerConfig {
            bind: args.listen,
            tls: Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
        }];
    }
    if let Some(group) = config.groups.get_mut(SIMPLE_GROUP) {
        group.balance = args.balance.parse::<Balance>()?;
        group.health.path = args.health_path.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Prints each listener's URL on standard output, the admin URL on standard error.
pub fn announce(
    listeners: &[nimbus_lb::Listener],
    admin: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    for l in listeners {
        let scheme = if l.is_tls() { "https" } else { "http" };
        println!("{scheme}://{}/", l.local_addr()?);
    }
    if let Some(admin) = admin {
        eprintln!(
            "nimbus lb status: http://{}/status (metrics: /metrics)",
            admin.local_addr()?
        );
    }
    Ok(())
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// SIGHUP's stream, registered before anything else can take time.
fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(
                |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reload needs a restart"),
            )
            .ok()
    }
    #[cfg(not(unix))]
    None
}

async fn reload_on_hangup(lb: Balancer, path: Option<PathBuf>, mut hangups: Hangups) {
    #[cfg(unix)]
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            eprintln!("nimbus lb: SIGHUP ignored (no --config file to reload)");
            continue;
        };
        let result = Config::from_file(path)
            .map_err(nimbus_lb::LbError::from)
            .and_then(|c| lb.reload(c))
            .with_context(|| {
                format!(
                    "{} not reloaded; the running configuration stays",
                    path.display()
                )
            });
        match result {
            Ok(()) => eprintln!("nimbus lb: {} reloaded", path.display()),
            Err(e) => eprintln!("nimbus lb: {e:#}"),
        }
    }
    #[cfg(not(unix))]
    let _ = (lb, path, hangups);
}

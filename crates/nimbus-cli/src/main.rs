//! The `nimbus` binary: parses the command line, opens the engine, dispatches to a subcommand.

mod args;
mod cmd;
mod engine_url;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// mimalloc for the whole binary: glibc's malloc (with its trimming and consolidation) took a
/// fifth of the load balancer's time per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Queue(c) => cmd::queue::run(&cli.engine, c).await,
        Command::Topic(c) => cmd::topic::run(&cli.engine, c).await,
        Command::Ledger(c) => cmd::ledger::run(&cli.engine, c).await,
        Command::Up(a) => cmd::up::up(&cli.engine, a).await,
        Command::Web(a) => cmd::up::web(&cli.engine, a).await,
        Command::Worker(a) => cmd::worker::run(&cli.engine, a).await,
        Command::Tasks(c) => cmd::tasks::run(&cli.engine, c).await,
        Command::Video(c) => cmd::video::run(&cli.engine, c).await,
        Command::Bench(c) => cmd::bench::run(&cli.engine, c).await,
        Command::Autoscale(a) => cmd::autoscale::run(&cli.engine, a).await,
        Command::Scale(c) => cmd::scale::run(c),
        Command::Lb(a) => cmd::lb::run(a).await,
        Command::Cluster(crate::args::ClusterCmd::Up(a)) => cmd::cluster::up(&cli.engine, a).await,
        #[cfg(feature = "aws")]
        Command::Aws(c) => cmd::aws::run(&cli.engine, c).await,
    }
}

/// A token cancelled on the first Ctrl-C (SIGINT) or SIGTERM. The handlers are in place when
/// this returns, so a signal that comes while a command is still starting up stops it cleanly
/// instead of killing it: every long-running command calls this first.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let fired = token.clone();
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops cleanly");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        fired.cancel();
    });
    token
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,nimbus=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

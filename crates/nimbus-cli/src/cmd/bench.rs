//! `nimbus bench ...`: runs a benchmark and prints its figures as a Markdown table.

use std::sync::Arc;

use anyhow::Context;
use nimbus_bench::engine::{EngineBench, SCENARIOS};
use nimbus_bench::{median, raw_sqlite};
use nimbus_sqlite::{SqliteEngine, SqliteOptions};

use crate::args::{BenchCmd, EngineArgs};

pub async fn run(_engine: &EngineArgs, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Engine {
            messages,
            payload,
            runs,
            no_baseline,
        } => {
            anyhow::ensure!(
                messages > 0 && runs > 0,
                "--messages and --runs must be at least 1"
            );
            engine(
                EngineBench {
                    messages,
                    payload,
                    runs,
                },
                !no_baseline,
            )
            .await
        }
    }
}

/// The embedded engine on a fresh temporary database, so a benchmark never touches user data.
async fn engine(bench: EngineBench, baseline: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let sqlite = SqliteEngine::open(dir.path().join("bench.db"), SqliteOptions::default())?;
    let queue: Arc<dyn nimbus_core::Queue> = Arc::new(sqlite);
    println!(
        "embedded engine (sqlite, WAL, synchronous=NORMAL: durable against process crash), {} messages of {} bytes, median of {} runs",
        bench.messages, bench.payload, bench.runs
    );
    println!("\n| scenario | messages/s |\n| --- | ---: |");
    for scenario in SCENARIOS {
        let mut rates = Vec::new();
        for _ in 0..bench.runs {
            rates.push(bench.run(&queue, scenario).await?);
        }
        println!("| {scenario} | {:.0} |", median(&mut rates));
    }
    if baseline {
        let mut rates = Vec::new();
        for run in 0..bench.runs {
            let db = dir.path().join(format!("raw-{run}.db"));
            let (messages, payload) = (bench.messages, bench.payload);
            let rate = tokio::task::spawn_blocking(move || {
                raw_sqlite::round_trip(&db, messages, 100, payload)
            })
            .await??;
            rates.push(rate);
        }
        println!(
            "| ceiling: minimal queue on raw SQLite, round trip, 1 task, batch 100 | {:.0} |",
            median(&mut rates)
        );
    }
    Ok(())
}

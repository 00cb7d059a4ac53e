//! `nimbus tasks ...`: seed 002's tools: gen, submit, local, check.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use nimbus_core::QueueName;
use nimbus_workloads::sessions;
use nimbus_workloads::tasks::{run_pool, ExecPolicy, TaskSpec};

use crate::args::{EngineArgs, TasksCmd};
use crate::engine_url;

pub async fn run(engine: &EngineArgs, cmd: TasksCmd) -> anyhow::Result<()> {
    match cmd {
        TasksCmd::Gen {
            count,
            task,
            output,
        } => {
            let line = task.join(" ");
            line.parse::<TaskSpec>().map_err(anyhow::Error::msg)?;
            let text: String = std::iter::repeat_n(format!("{line}\n"), count).collect();
            std::fs::write(&output, text)
                .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!("wrote {count} x `{line}` to {}", output.display());
        }
        TasksCmd::Submit {
            file,
            queue,
            reply_to,
        } => {
            let engine = engine_url::open(engine).await?;
            let tasks = read_workload(&file)?;
            let bar = indicatif::ProgressBar::new(tasks.len() as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} tasks sent ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (queue, reply_to) = (QueueName::new(queue)?, QueueName::new(reply_to)?);
            let started = Instant::now();
            let session = sessions::submit(&engine, &queue, &reply_to, &tasks, |n| {
                bar.set_position(n as u64)
            })
            .await?;
            bar.finish_and_clear();
            eprintln!(
                "submitted {} tasks to {queue} in {:.2?}; reports go to {reply_to}; check with: nimbus tasks check --session {}",
                session.total,
                started.elapsed(),
                session.id
            );
            println!("{}", session.id);
        }
        TasksCmd::Local {
            file,
            threads,
            allow_exec,
        } => {
            let policy = match allow_exec {
                Some(p) => ExecPolicy::allow(&p).map_err(anyhow::Error::msg)?,
                None => ExecPolicy::default(),
            };
            let specs = read_workload(&file)?
                .iter()
                .enumerate()
                .map(|(n, l)| {
                    l.parse::<TaskSpec>()
                        .map_err(|e| anyhow::anyhow!("task {} of {}: {e}", n + 1, file.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1);
            let (elapsed, failed) = run_pool(&specs, threads, &policy);
            let n = specs.len();
            println!(
                "{n} tasks on {threads} thread(s) in {:.3} s: {} succeeded, {failed} failed, {:.0} tasks/s",
                elapsed.as_secs_f64(),
                n - failed,
                n as f64 / elapsed.as_secs_f64()
            );
        }
        TasksCmd::Check {
            queue,
            session,
            wait,
        } => return check(engine, &queue, session.as_deref(), wait).await,
    }
    Ok(())
}

fn read_workload(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read workload {}", file.display()))?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        !lines.is_empty(),
        "workload {} has no tasks",
        file.display()
    );
    Ok(lines)
}

async fn check(
    engine: &EngineArgs,
    queue: &str,
    only: Option<&str>,
    wait: Duration,
) -> anyhow::Result<()> {
    let engine = engine_url::open(engine).await?;
    let queue = QueueName::new(queue)?;
    engine
        .queue
        .queue_options(&queue)
        .await
        .with_context(|| format!("cannot check `{queue}`"))?;
    let deadline = Instant::now() + wait;
    loop {
        sessions::collect_reports(&engine, &queue, Duration::ZERO).await?;
        let ids: Vec<String> = match only {
            Some(id) => vec![id.to_string()],
            None => sessions::sessions(&engine).await?.into_keys().collect(),
        };
        anyhow::ensure!(!ids.is_empty(), "no session was submitted on this engine");
        let mut summaries = Vec::new();
        for id in ids {
            let summary = sessions::summarize(&engine, &id).await?;
            summaries.push((id, summary));
        }
        let complete = summaries.iter().all(|(_, s)| s.complete());
        if complete || Instant::now() >= deadline {
            for (id, s) in &summaries {
                let verdict = if s.complete() {
                    "all accounted for".to_string()
                } else {
                    format!("{} missing", s.submitted - s.reported)
                };
                println!(
                    "session {id}: {} submitted, {} reported ({} succeeded, {} failed): {verdict}",
                    s.submitted, s.reported, s.succeeded, s.failed
                );
                for (task, reason) in &s.failures {
                    println!("  failed {task}: {reason}");
                }
            }
            anyhow::ensure!(complete, "not every task is accounted for yet");
            return Ok(());
        }
        let _ = sessions::collect_reports(
            &engine,
            &queue,
            Duration::from_secs(1).min(deadline - Instant::now()),
        )
        .await?;
    }
}

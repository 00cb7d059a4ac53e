//! The end of a chaos run: every accepted piece of work against what the platform did with it.
//! Tasks reported as planned, effects once (or twice only inside the documented window: the
//! worker that ran it was killed, paused or died within the window of the effect), atoms
//! minima equal to the f64 reference, labels equal to the undisturbed run's, queues empty,
//! poison tasks failed for good (or dead-lettered) and no other task dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nimbus_core::task::ATTR_TASK_ID;
use nimbus_core::{Engine, JobState, QueueName, ReceiveRequest, TaskStatus};
use nimbus_workloads::atoms::{self, kernel};
use nimbus_workloads::jobs::JobStore;

use super::effects::Effect;
use super::fleet::{Disturbance, EVERYONE};
use super::workload::{Book, Plan};

/// One check and how it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Figures, or the first few cases where it did not hold.
    pub detail: String,
}

/// Figures the verdict found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tally {
    /// Accepted tasks not reported as planned (or reported and without their effect).
    pub lost: u64,
    /// Accepted tasks that were not poison and ended in a dead-letter queue.
    pub dead_lettered: u64,
    /// Tasks whose effect ran more than once with no disturbance to explain it.
    pub doubled: u64,
    /// Tasks whose effect ran twice inside the documented window.
    pub window_hits: u64,
    /// Those, by what put their worker inside it.
    pub window_hits_by: BTreeMap<String, u64>,
    /// Jobs that ended wrong or not at all.
    pub wrong_jobs: u64,
    /// Effects seen.
    pub effects: u64,
    /// The most times a reported task that was not poison had been received: how close the
    /// run came to dead-lettering one (at the queue's `max_receives`).
    pub most_receives: u32,
}

/// What the report of a task that kept killing its workers says.
const POISON_REASON: &str = "its worker ended while running it";

fn task_id(session: &str, n: usize) -> String {
    format!("{session}-{}", n + 1)
}

/// The disturbance of an effect's worker (or of everyone) within `window` of it, if any.
fn disturbed<'a>(
    effect: &Effect,
    disturbances: &'a [Disturbance],
    window: Duration,
) -> Option<&'a Disturbance> {
    disturbances.iter().find(|d| {
        (d.incarnation == effect.worker || d.incarnation == EVERYONE)
            && effect.at + window >= d.from
            && effect.at <= d.to + window
    })
}

/// Tasks: reported as planned, effects once or inside the window.
pub async fn tasks(
    engine: &Engine,
    book: &Book,
    effects: &[Effect],
    disturbances: &[Disturbance],
    window: Duration,
    dead: &BTreeSet<String>,
    tally: &mut Tally,
) -> nimbus_core::Result<Vec<Check>> {
    let mut by_task: BTreeMap<&str, Vec<&Effect>> = BTreeMap::new();
    for e in effects {
        by_task.entry(e.task.as_str()).or_default().push(e);
    }
    tally.effects = effects.len() as u64;
    let (mut misreported, mut doubled, mut hits) = (Vec::new(), Vec::new(), 0u64);
    for batch in &book.batches {
        let reported = nimbus_workloads::sessions::reports(engine, &batch.session).await?;
        for (n, plan) in batch.plans.iter().enumerate() {
            let id = task_id(&batch.session, n);
            let report = reported.get(&id);
            let status = report.map(|r| r.status);
            if *plan != Plan::Poison {
                let receives = report.map_or(0, |r| r.attempt);
                tally.most_receives = tally.most_receives.max(receives);
            }
            let ran = by_task.get(id.as_str()).map_or(&[][..], Vec::as_slice);
            let as_planned = match plan {
                Plan::Effect => status == Some(TaskStatus::Succeeded) && !ran.is_empty(),
                Plan::Fails => status == Some(TaskStatus::Failed),
                // Failed for good by the worker that found its workers dying under it, or
                // dead-lettered first where the queue allows fewer receives than that.
                Plan::Poison => {
                    report.is_some_and(|r| {
                        r.status == TaskStatus::Failed
                            && r.error
                                .as_deref()
                                .is_some_and(|e| e.contains(POISON_REASON))
                    }) || (status.is_none() && dead.contains(&id))
                }
            };
            if !as_planned {
                let workers: Vec<&str> = ran.iter().map(|e| e.worker.as_str()).collect();
                misreported.push(format!(
                    "{id} ({plan:?}): reported {status:?}, effects on {workers:?}"
                ));
            }
            if ran.len() > 1 {
                let explained: Vec<&Disturbance> = ran
                    .iter()
                    .filter_map(|e| disturbed(e, disturbances, window))
                    .collect();
                if explained.len() + 1 >= ran.len() {
                    hits += 1;
                    let by = explained
                        .first()
                        .map_or("?".to_string(), |d| format!("{:?}", d.hit));
                    *tally.window_hits_by.entry(by).or_insert(0) += 1;
                } else {
                    let workers: Vec<&str> = ran.iter().map(|e| e.worker.as_str()).collect();
                    doubled.push(format!("{id} ran {} times on {workers:?}", ran.len()));
                }
            }
        }
    }
    // A task in a dead-letter queue is not lost (it can be redriven), but it is not as planned.
    tally.dead_lettered = misreported
        .iter()
        .filter(|m| dead.contains(m.split(' ').next().unwrap_or("")))
        .count() as u64;
    tally.lost = misreported.len() as u64 - tally.dead_lettered;
    tally.doubled = doubled.len() as u64;
    tally.window_hits = hits;
    let planned = book.tasks(Plan::Effect) + book.tasks(Plan::Fails) + book.tasks(Plan::Poison);
    Ok(vec![
        check(
            "every accepted task reported as planned",
            &misreported,
            format!(
                "{planned} tasks ({} with an effect, {} designed to fail, {} poison)",
                book.tasks(Plan::Effect),
                book.tasks(Plan::Fails),
                book.tasks(Plan::Poison)
            ),
        ),
        check(
            "no effect ran twice outside the documented window",
            &doubled,
            format!("{} effects; the window was hit {hits} times", effects.len()),
        ),
    ])
}

fn check(name: &str, failures: &[String], fine: String) -> Check {
    Check {
        name: name.to_string(),
        ok: failures.is_empty(),
        detail: if failures.is_empty() {
            fine
        } else {
            format!(
                "{} cases, such as: {}",
                failures.len(),
                failures
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        },
    }
}

/// Jobs: atoms minima against the f64 reference, labels against the undisturbed run.
pub async fn jobs(
    engine: &Engine,
    book: &Book,
    baseline: &BTreeMap<String, String>,
    tally: &mut Tally,
) -> nimbus_core::Result<Vec<Check>> {
    let store = JobStore::new(engine.clone());
    let mut wrong_atoms = Vec::new();
    for job in &book.atoms {
        let got = store.get(&job.id).await?;
        let reference =
            kernel::reference_minimum(&atoms::generate(job.atoms, job.grid, job.seed), job.grid);
        let result = got.result.clone().unwrap_or_default();
        let minimum = result["minimum"].as_f64();
        let point = serde_json::from_value::<[u32; 3]>(result["point"].clone()).ok();
        let right = got.state == JobState::Succeeded
            && minimum.is_some_and(|m| (m - reference.value).abs() <= 1e-4 * reference.value.abs())
            && point == Some(reference.point);
        if !right {
            wrong_atoms.push(format!(
                "{} ({:?}): {minimum:?} at {point:?}, the reference {} at {:?}",
                job.id, got.state, reference.value, reference.point
            ));
        }
    }
    let mut wrong_labels = Vec::new();
    for job in &book.classify {
        let got = store.get(&job.id).await?;
        let label = got
            .result
            .as_ref()
            .and_then(|r| r.pointer("/images/0/labels/0/label"))
            .and_then(|l| l.as_str())
            .map(str::to_string);
        let expected = baseline.get(&job.image);
        if got.state != JobState::Succeeded || label.as_ref() != expected {
            wrong_labels.push(format!(
                "{} ({:?}) {}: {label:?}, undisturbed {expected:?}",
                job.id, got.state, job.image
            ));
        }
    }
    tally.wrong_jobs = (wrong_atoms.len() + wrong_labels.len()) as u64;
    Ok(vec![
        check(
            "every accepted atoms job found the reference minimum",
            &wrong_atoms,
            format!("{} jobs", book.atoms.len()),
        ),
        check(
            "every accepted classify job gave the undisturbed run's label",
            &wrong_labels,
            format!("{} jobs", book.classify.len()),
        ),
    ])
}

/// The task ids (or message ids) in the task queue's dead-letter queue and in that of every
/// other queue that has one (`nimbus aws up` gives each work queue a `-dead` queue: a job's
/// message there is a job nothing serves). Read once, after the fleet has stopped.
pub async fn dead_letters(
    engine: &Engine,
    dead_letter: &QueueName,
) -> nimbus_core::Result<BTreeSet<String>> {
    let mut dead_letters = vec![dead_letter.clone()];
    for name in nimbus_workloads::kinds::all_queues() {
        let queue = QueueName::new(name)?;
        if let Some(dl) = engine.queue.queue_options(&queue).await?.dead_letter {
            if !dead_letters.contains(&dl.queue) {
                dead_letters.push(dl.queue);
            }
        }
    }
    let mut dead = BTreeSet::new();
    for queue in &dead_letters {
        loop {
            let got = engine
                .queue
                .receive(
                    queue,
                    ReceiveRequest::new(10).visibility(Duration::from_secs(600)),
                )
                .await?;
            if got.is_empty() {
                break;
            }
            for d in got {
                dead.insert(
                    d.attributes
                        .get(ATTR_TASK_ID)
                        .cloned()
                        .unwrap_or_else(|| format!("message {} of {queue}", d.message_id)),
                );
            }
        }
    }
    Ok(dead)
}

/// Queues: nothing left waiting or in flight; no dead letters but poison tasks.
pub async fn queues(
    engine: &Engine,
    book: &Book,
    dead: &BTreeSet<String>,
) -> nimbus_core::Result<Vec<Check>> {
    let mut left = Vec::new();
    for name in nimbus_workloads::kinds::all_queues() {
        let queue = QueueName::new(name)?;
        let depth = engine.queue.depth(&queue).await?;
        if depth.visible + depth.in_flight + depth.delayed > 0 {
            left.push(format!(
                "{name}: {} waiting, {} in flight, {} delayed",
                depth.visible, depth.in_flight, depth.delayed
            ));
        }
    }
    let poison: BTreeSet<String> = book
        .batches
        .iter()
        .flat_map(|b| {
            b.plans
                .iter()
                .enumerate()
                .filter(|(_, p)| **p == Plan::Poison)
                .map(|(n, _)| task_id(&b.session, n))
        })
        .collect();
    let misplaced: Vec<String> = dead
        .difference(&poison)
        .map(|id| format!("{id} was dead-lettered"))
        .collect();
    Ok(vec![
        check(
            "no message left waiting or in flight",
            &left,
            "every work and reply queue is empty".into(),
        ),
        check(
            "no task dead-lettered but a poison one",
            &misplaced,
            format!("{} dead-lettered, all poison", dead.len()),
        ),
    ])
}

/// Workers that ended by themselves: only by the poison task's SIGKILL.
pub fn deaths(deaths: &[(String, String)]) -> Check {
    let crashes: Vec<String> = deaths
        .iter()
        .filter(|(_, status)| !status.contains("SIGKILL"))
        .map(|(who, status)| format!("{who}: {status}"))
        .collect();
    check(
        "no process ended by itself but by the poison task",
        &crashes,
        format!("{} killed by the poison task", deaths.len()),
    )
}

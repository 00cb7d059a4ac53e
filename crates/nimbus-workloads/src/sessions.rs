//! Task sessions (seed 002's client): submit a workload under a session id, collect the
//! workers' reports into the ledger, and say whether every submitted task is accounted for.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::queue::MAX_BATCH;
use nimbus_core::task::{ATTR_KIND, ATTR_REPLY_TO, ATTR_SESSION, ATTR_TASK_ID};
use nimbus_core::{
    Condition, Engine, Error, ErrorKind, ItemKey, OutgoingMessage, QueueName, QueueOptions,
    ReceiveRequest, Result, TaskReport, TaskStatus,
};
use serde::{Deserialize, Serialize};

use crate::tasks::KIND;

/// The ledger partition that lists sessions.
const SESSIONS: &str = "sessions";

/// The ledger partition of a session's collected reports, one item per task id.
fn reports_partition(session: Option<&str>) -> String {
    format!("session#{}", session.unwrap_or("none"))
}

/// The reports of session `id` collected so far, by task id (items that are not reports are
/// skipped).
pub async fn reports(engine: &Engine, id: &str) -> Result<BTreeMap<String, TaskReport>> {
    Ok(engine
        .ledger
        .list(&reports_partition(Some(id)))
        .await?
        .into_iter()
        .filter_map(|(task_id, item)| Some((task_id, serde_json::from_slice(&item.value).ok()?)))
        .collect())
}

/// What the ledger keeps about a submitted session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session id; task ids are `<session>-<n>`.
    pub id: String,
    /// How many tasks were submitted.
    pub total: u64,
    /// Where they went.
    pub queue: String,
    /// Where their reports go.
    pub reply_to: String,
}

/// Where a session stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Tasks submitted.
    pub submitted: u64,
    /// Distinct tasks reported.
    pub reported: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed; with the first few reasons.
    pub failed: u64,
    /// Up to five failure reasons, by task id.
    pub failures: Vec<(String, String)>,
}

impl Summary {
    /// Whether every submitted task has a report.
    pub fn complete(&self) -> bool {
        self.reported >= self.submitted
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::internal("cannot encode").with_source(e))
}

/// Creates `name` with default options unless it exists (with any options).
pub async fn ensure_queue(engine: &Engine, name: &QueueName) -> Result<()> {
    match engine
        .queue
        .create_queue(name, &QueueOptions::default())
        .await
    {
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(()),
        other => other,
    }
}

/// Submits `tasks` (workload lines) to `queue` under a new session, in batches, calling
/// `progress` with the count sent so far. Every line is checked first: a bad line fails the
/// submission before anything is sent.
pub async fn submit(
    engine: &Engine,
    queue: &QueueName,
    reply_to: &QueueName,
    tasks: &[String],
    mut progress: impl FnMut(usize),
) -> Result<Session> {
    for (n, line) in tasks.iter().enumerate() {
        line.parse::<crate::tasks::TaskSpec>()
            .map_err(|e| Error::invalid(format!("task {} of the workload: {e}", n + 1)))?;
    }
    ensure_queue(engine, queue).await?;
    ensure_queue(engine, reply_to).await?;
    let session = Session {
        id: format!("{:012x}", fastrand::u64(..) >> 16),
        total: tasks.len() as u64,
        queue: queue.to_string(),
        reply_to: reply_to.to_string(),
    };
    engine
        .ledger
        .put(
            &ItemKey::new(SESSIONS, &session.id)?,
            encode(&session)?,
            Condition::Absent,
        )
        .await?;
    let mut sent = 0;
    for chunk in tasks.chunks(MAX_BATCH.min(500)) {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, line)| {
                OutgoingMessage::new(line.clone())
                    .attribute(ATTR_KIND, KIND)
                    .attribute(ATTR_TASK_ID, format!("{}-{}", session.id, sent + i + 1))
                    .attribute(ATTR_SESSION, session.id.clone())
                    .attribute(ATTR_REPLY_TO, reply_to.to_string())
            })
            .collect();
        engine.queue.send_batch(queue, batch).await?;
        sent += chunk.len();
        progress(sent);
    }
    Ok(session)
}

/// Moves every report waiting on `reply_to` into the ledger (one item per task, so a report
/// delivered twice counts once) and deletes it from the queue. Waits up to `wait` for the first.
/// Returns how many reports it moved.
pub async fn collect_reports(
    engine: &Engine,
    reply_to: &QueueName,
    wait: Duration,
) -> Result<usize> {
    let mut moved = 0;
    let mut wait = wait;
    loop {
        let got = engine
            .queue
            .receive(reply_to, ReceiveRequest::new(MAX_BATCH).wait(wait))
            .await?;
        if got.is_empty() {
            return Ok(moved);
        }
        wait = Duration::ZERO;
        let mut items = Vec::with_capacity(got.len());
        for d in &got {
            match serde_json::from_slice::<TaskReport>(&d.body) {
                Ok(report) => {
                    let partition = reports_partition(report.session.as_deref());
                    // A report that cannot be stored (a task id or session longer than the
                    // ledger's keys) is dropped alone, not with the batch it came in.
                    match ItemKey::new(partition, &report.task_id) {
                        Ok(key) => items.push((key, d.body.clone(), Condition::Always)),
                        Err(e) => {
                            tracing::warn!(queue = %reply_to, message_id = %d.message_id, error = %e, "task report cannot be stored; dropped")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %reply_to, message_id = %d.message_id, error = %e, "not a task report; dropped")
                }
            }
        }
        if !items.is_empty() {
            engine.ledger.put_batch(items).await?;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
        engine.queue.delete_batch(reply_to, &receipts).await?;
        moved += got.len();
    }
}

/// Every submitted session, by id.
pub async fn sessions(engine: &Engine) -> Result<BTreeMap<String, Session>> {
    engine
        .ledger
        .list(SESSIONS)
        .await?
        .into_iter()
        .map(|(id, item)| {
            let s: Session = serde_json::from_slice(&item.value).map_err(|e| {
                Error::internal(format!("session {id} record is corrupt")).with_source(e)
            })?;
            Ok((id, s))
        })
        .collect()
}

/// Where session `id` stands, from the reports collected so far.
pub async fn summarize(engine: &Engine, id: &str) -> Result<Summary> {
    let session = engine
        .ledger
        .get(&ItemKey::new(SESSIONS, id)?)
        .await?
        .ok_or_else(|| Error::not_found(format!("session `{id}` was never submitted here")))?;
    let session: Session = serde_json::from_slice(&session.value)
        .map_err(|e| Error::internal(format!("session {id} record is corrupt")).with_source(e))?;
    let mut summary = Summary {
        submitted: session.total,
        ..Summary::default()
    };
    for (task_id, report) in reports(engine, id).await? {
        summary.reported += 1;
        match report.status {
            TaskStatus::Succeeded => summary.succeeded += 1,
            TaskStatus::Failed => {
                summary.failed += 1;
                if summary.failures.len() < 5 {
                    summary
                        .failures
                        .push((task_id, report.error.unwrap_or_default()));
                }
            }
        }
    }
    Ok(summary)
}

//! The sweep of ended task claims: without it the ledger keeps every task id's claim (and its
//! report) forever. When a completer records an end it also writes an index item in the bucket
//! of the end's hour (`claims-ended#<hour>`, sort key `<ended ms>/<task id>`, so a bucket lists
//! in end order). The buckets have a fixed width, whatever retention any worker is configured
//! with, so workers with different settings write the same index. One sweeper at a time (a
//! lease in the ledger, taken and renewed by compare-and-swap) walks the buckets from a cursor,
//! at most `per_tick` items a tick: an index item whose end is past the retention has its claim
//! deleted (only if the claim is still that end: its own `ended_ms` is checked, and the delete is
//! conditional on the version just read), then the index item itself.
//!
//! A duplicate of a task arriving after its claim was swept is a new task: it runs again. The
//! default retention (7 days) is longer than SQS keeps a message by default (4 days), so a
//! redelivery cannot outlive its claim unless a queue keeps messages longer than the retention.

use std::time::Duration;

use bytes::Bytes;
use nimbus_core::{Condition, Engine, ItemKey, Order, Page, Result};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::claim::{claim_key, now_ms, Claim};

/// The width of an index bucket, fixed for every worker.
pub const BUCKET_MS: i64 = 3_600_000;
/// Where the sweeper keeps its lease and its cursor.
const SWEEPER: &str = "claims-sweep";

/// How ended claims are swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepConfig {
    /// How long an ended claim is kept (a duplicate within it is recognised).
    pub retention: Duration,
    /// How often the sweeper looks.
    pub interval: Duration,
    /// The most index items one tick handles.
    pub per_tick: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(10),
            per_tick: 500,
        }
    }
}

/// The index item of an end recorded at `ended_ms` for `task_id`.
pub fn index_key(task_id: &str, ended_ms: i64) -> Result<ItemKey> {
    ItemKey::new(
        bucket_partition(ended_ms / BUCKET_MS),
        format!("{ended_ms:013}/{task_id}"),
    )
}

fn bucket_partition(bucket: i64) -> String {
    format!("claims-ended#{bucket}")
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    owner: String,
    until_ms: i64,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Claims deleted.
    pub claims: u64,
    /// Index items removed (claims that were swept, or changed since their end).
    pub index_items: u64,
}

/// Takes or renews the sweeper's lease for `owner`; whether this worker sweeps now.
async fn hold_lease(engine: &Engine, owner: &str, hold: Duration) -> Result<bool> {
    let key = ItemKey::new(SWEEPER, "lease")?;
    let now = now_ms();
    let until_ms = now + i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 2);
    let value = Bytes::from(
        serde_json::to_vec(&Lease {
            owner: owner.to_string(),
            until_ms,
        })
        .unwrap_or_default(),
    );
    let condition = match engine.ledger.get(&key).await? {
        None => Condition::Absent,
        Some(item) => {
            let held: Option<Lease> = serde_json::from_slice(&item.value).ok();
            match held {
                Some(l) if l.owner != owner && l.until_ms > now => return Ok(false),
                _ => Condition::Version(item.version),
            }
        }
    };
    Ok(engine.ledger.put(&key, value, condition).await?.is_some())
}

/// One tick of the sweep as `owner`: nothing unless it holds the lease.
pub async fn sweep_once(engine: &Engine, owner: &str, config: &SweepConfig) -> Result<Swept> {
    let mut swept = Swept::default();
    if !hold_lease(engine, owner, config.interval * 3).await? {
        return Ok(swept);
    }
    let retention = i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX / 2);
    let cutoff = now_ms() - retention;
    let cursor_key = ItemKey::new(SWEEPER, "cursor")?;
    let stored = engine.ledger.get(&cursor_key).await?;
    let mut version = stored.as_ref().map(|i| i.version);
    let mut bucket = stored
        .and_then(|i| std::str::from_utf8(&i.value).ok()?.parse::<i64>().ok())
        // The first sweep of a deployment starts a bucket before anything can be due.
        .unwrap_or(cutoff / BUCKET_MS - 1);
    let mut budget = config.per_tick;
    while budget > 0 && bucket * BUCKET_MS <= cutoff {
        let partition = bucket_partition(bucket);
        let page = engine
            .ledger
            .list_page(Page {
                partition: &partition,
                after: None,
                limit: budget.min(nimbus_core::ledger::MAX_PAGE),
                order: Order::Ascending,
            })
            .await?;
        if page.is_empty() {
            if (bucket + 1) * BUCKET_MS > cutoff {
                break; // the bucket still fills with ends that are not due
            }
            bucket += 1;
            let condition = version.map_or(Condition::Absent, Condition::Version);
            match engine
                .ledger
                .put(&cursor_key, Bytes::from(bucket.to_string()), condition)
                .await?
            {
                Some(v) => version = Some(v),
                None => return Ok(swept), // another sweeper moved it: it owns the sweep now
            }
            continue;
        }
        for (sort, _) in page {
            budget -= 1;
            let Some((ended, task_id)) = sort.split_once('/') else {
                continue;
            };
            let ended: i64 = ended.parse().unwrap_or(i64::MAX);
            if ended > cutoff {
                return Ok(swept); // the rest of this bucket ended later
            }
            let key = claim_key(task_id)?;
            if let Some(item) = engine.ledger.get(&key).await? {
                let due = matches!(Claim::decode(&item.value), Ok(Claim::Ended { ended_ms, .. }) if ended_ms <= cutoff);
                if due
                    && engine
                        .ledger
                        .delete(&key, Condition::Version(item.version))
                        .await?
                {
                    swept.claims += 1;
                }
            }
            engine
                .ledger
                .delete(&ItemKey::new(&partition, &sort)?, Condition::Always)
                .await?;
            swept.index_items += 1;
        }
    }
    Ok(swept)
}

/// Sweeps every `config.interval` until `shutdown`; a failed tick is logged and tried again.
pub async fn run(engine: Engine, owner: String, config: SweepConfig, shutdown: CancellationToken) {
    loop {
        match sweep_once(&engine, &owner, &config).await {
            Ok(s) if s.claims > 0 || s.index_items > 0 => {
                tracing::info!(
                    claims = s.claims,
                    index_items = s.index_items,
                    "ended task claims swept"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping ended task claims failed; trying again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

//! Retention of ended task claims: without it the ledger would keep one claim per task ever run.
//!
//! When the completer records a task's end it also writes an index item in the partition of the
//! time bucket it ended in (`ended#<bucket>`, sort key the task id). Every worker sweeps now and
//! then: each bucket wholly older than the retention is listed, each claim it names that is still
//! ended is deleted (compare-and-swap on its version, so a claim taken over meanwhile stays), then
//! the index item. A cursor item (`sweep` / `ended`) remembers the last bucket swept. Sweeps by
//! several workers at once only repeat each other's deletes. After its claim is swept a task id
//! may run again: deduplication holds for the retention (SQS FIFO's own window is 5 minutes).

use std::time::Duration;

use bytes::Bytes;
use nimbus_core::{Condition, ItemKey, Ledger, Result};

use crate::claim::{claim_key, Claim};

/// Buckets looked at behind the retention when no cursor exists yet (the first sweep).
const FIRST_LOOKBACK: u64 = 256;

/// The width of one time bucket: an eighth of the retention, between 1 s and 1 h.
pub fn bucket_width(retention: Duration) -> Duration {
    (retention / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

fn bucket_of(ms: u64, retention: Duration) -> u64 {
    ms / millis(bucket_width(retention))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn bucket_partition(bucket: u64) -> String {
    format!("ended#{bucket}")
}

/// The index item that records `task_id` ending at `now_ms`.
pub fn ended_index(task_id: &str, now_ms: u64, retention: Duration) -> Result<ItemKey> {
    ItemKey::new(bucket_partition(bucket_of(now_ms, retention)), task_id)
}

fn cursor_key() -> Result<ItemKey> {
    ItemKey::new("sweep", "ended")
}

/// Deletes the ended claims of every bucket wholly older than `retention` at `now_ms` and not
/// swept yet; returns how many claims it deleted.
pub async fn sweep(ledger: &dyn Ledger, retention: Duration, now_ms: u64) -> Result<u64> {
    let Some(oldest_kept) = now_ms.checked_sub(millis(retention)) else {
        return Ok(0);
    };
    // Bucket b holds ends in [b w, (b + 1) w): all older than the retention when (b + 1) w is.
    let Some(last) = bucket_of(oldest_kept, retention).checked_sub(1) else {
        return Ok(0);
    };
    let cursor = ledger.get(&cursor_key()?).await?;
    let first = match cursor.and_then(|item| std::str::from_utf8(&item.value).ok()?.parse().ok()) {
        Some(swept) => u64::saturating_add(swept, 1),
        None => last.saturating_sub(FIRST_LOOKBACK),
    };
    let mut deleted = 0;
    for bucket in first..=last {
        deleted += sweep_bucket(ledger, bucket).await?;
        let swept = Bytes::from(bucket.to_string());
        ledger.put(&cursor_key()?, swept, Condition::Always).await?;
    }
    Ok(deleted)
}

async fn sweep_bucket(ledger: &dyn Ledger, bucket: u64) -> Result<u64> {
    let partition = bucket_partition(bucket);
    let mut deleted = 0;
    for (task_id, _) in ledger.list(&partition).await? {
        let key = claim_key(&task_id)?;
        if let Some(item) = ledger.get(&key).await? {
            if matches!(Claim::decode(&item.value), Ok(Claim::Ended { .. }))
                && ledger
                    .delete(&key, Condition::Version(item.version))
                    .await?
            {
                deleted += 1;
            }
        }
        ledger
            .delete(
                &ItemKey::new(partition.clone(), task_id)?,
                Condition::Always,
            )
            .await?;
    }
    if deleted > 0 {
        tracing::info!(bucket, deleted, "swept ended task claims");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_an_eighth_of_the_retention_within_bounds() {
        assert_eq!(
            bucket_width(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            bucket_width(Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(
            bucket_width(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
    }
}

//! The job store: job records in the ledger, their progress counters, and job events on the
//! `events` topic. Shared by the web tier (which creates and reads jobs) and the workers.

use bytes::Bytes;
use nimbus_core::{
    Condition, Engine, Error, ItemKey, Job, JobEvent, JobState, Order, Page, Progress, QueueName,
    Result, TopicName,
};

/// The topic job events go to.
pub const EVENTS_TOPIC: &str = "events";
/// The ledger partition of job records.
const JOBS: &str = "jobs";
/// The ledger partition of the job counts by state (a counter per state).
const COUNTS: &str = "jobs#counts";
/// The item of [`COUNTS`] that says since when the counts are kept.
const COUNTED_SINCE: &str = "since";

/// A blob store failure as an engine error: a missing blob is `NotFound`, anything else
/// `Unavailable` (retried). Every job kind's blob reads and writes go through it.
pub fn blob_error(e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => nimbus_core::ErrorKind::NotFound,
        _ => nimbus_core::ErrorKind::Unavailable,
    };
    Error::new(kind, format!("blob store: {e}")).with_source(e)
}

/// Milliseconds since the epoch, by nimbus's one clock.
pub use nimbus_core::clock::now_ms;

/// Jobs over an engine.
#[derive(Clone, Debug)]
pub struct JobStore {
    engine: Engine,
}

fn record_key(id: &str) -> Result<ItemKey> {
    ItemKey::new(JOBS, id)
}

/// The key of item `sort` in a job's own partition (`job#<id>`): its progress counter, its
/// recorded parts, whatever its kind keeps per job.
pub fn job_item(id: &str, sort: &str) -> Result<ItemKey> {
    ItemKey::new(job_partition(id), sort)
}

/// The job a task is part of: every job kind names its tasks `<job id>/<part>` (`<id>/generate`,
/// `<id>/slab/<z>`); `None` for a task of no job.
pub fn job_of_task(task_id: &str) -> Option<&str> {
    task_id
        .split_once('/')
        .map(|(job, _)| job)
        .filter(|job| !job.is_empty())
}

fn job_partition(id: &str) -> String {
    format!("job#{id}")
}

fn progress_key(id: &str) -> Result<ItemKey> {
    job_item(id, "progress")
}

fn decode(id: &str, bytes: &[u8]) -> Result<Job> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("job {id} record is corrupt")).with_source(e))
}

fn encode(job: &Job) -> Result<Bytes> {
    serde_json::to_vec(job)
        .map(Bytes::from)
        .map_err(|e| Error::internal("cannot encode job").with_source(e))
}

impl JobStore {
    /// A store over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Creates the queues and the topic jobs need (idempotent), and starts the job counts (once
    /// per store, counting the jobs it already holds).
    pub async fn prepare(&self, queues: &[&str]) -> Result<()> {
        for q in queues {
            crate::sessions::ensure_queue(&self.engine, &QueueName::new(*q)?).await?;
        }
        self.count_once().await?;
        self.engine
            .topic
            .create_topic(&TopicName::new(EVENTS_TOPIC)?)
            .await
    }

    /// Stores a new job.
    pub async fn create(&self, job: &Job) -> Result<()> {
        let created = self
            .engine
            .ledger
            .put(&record_key(&job.id)?, encode(job)?, Condition::Absent)
            .await?;
        created.ok_or_else(|| Error::conflict(format!("job {} exists", job.id)))?;
        self.count_move(None, job.state).await
    }

    /// A job with its current progress; `NotFound` if there is none.
    pub async fn get(&self, id: &str) -> Result<Job> {
        let item = self
            .engine
            .ledger
            .get(&record_key(id)?)
            .await?
            .ok_or_else(|| Error::not_found(format!("job `{id}` does not exist")))?;
        let mut job = decode(id, &item.value)?;
        self.fill_progress(&mut job).await?;
        Ok(job)
    }

    async fn fill_progress(&self, job: &mut Job) -> Result<()> {
        if let Some(counter) = self.engine.ledger.get(&progress_key(&job.id)?).await? {
            let done = u64::try_from(counter.counter).unwrap_or(0);
            job.progress.done = job.progress.done.max(done.min(job.progress.total));
        }
        Ok(())
    }

    /// The newest jobs first, at most `limit` (1 to 1,000) after the job `cursor` (the last id
    /// of the page before); the cursor of the next page when there may be one. Reads one page of
    /// records, not all of them: job ids are UUIDv7, so their order is their creation order.
    pub async fn page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let page = Page {
            partition: JOBS,
            after: cursor,
            limit,
            order: Order::Descending,
        };
        let items = self.engine.ledger.list_page(page).await?;
        let next = (items.len() == limit)
            .then(|| items.last().map(|(id, _)| id.clone()))
            .flatten();
        let mut jobs = Vec::with_capacity(items.len());
        for (id, item) in items {
            let mut job = decode(&id, &item.value)?;
            if !job.state.is_terminal() {
                self.fill_progress(&mut job).await?;
            }
            jobs.push(job);
        }
        Ok((jobs, next))
    }

    /// The newest jobs, at most `limit`.
    pub async fn list(&self, limit: usize) -> Result<Vec<Job>> {
        Ok(self.page(limit, None).await?.0)
    }

    /// Counts of jobs by state, from counters kept as jobs are created and change state (not
    /// by reading every record). A store that has jobs from before the counters counts them once.
    pub async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let ledger = &self.engine.ledger;
        if ledger
            .get(&ItemKey::new(COUNTS, COUNTED_SINCE)?)
            .await?
            .is_none()
        {
            self.count_once().await?;
        }
        let kept = ledger.list(COUNTS).await?;
        Ok(JobState::ALL
            .iter()
            .map(|state| {
                let n = kept
                    .iter()
                    .find(|(sort, _)| sort == state.as_str())
                    .map_or(0, |(_, item)| item.counter.max(0) as u64);
                (*state, n)
            })
            .collect())
    }

    /// Counts the jobs recorded before counters were kept, once per store (the first caller to
    /// mark the counts as started does it).
    async fn count_once(&self) -> Result<()> {
        let ledger = &self.engine.ledger;
        let marker = ItemKey::new(COUNTS, COUNTED_SINCE)?;
        let since = now_ms();
        if !ledger
            .put_if_absent(&marker, Bytes::from(since.to_string()))
            .await?
        {
            return Ok(());
        }
        let mut counts = JobState::ALL.map(|s| (s, 0i64));
        for (id, item) in ledger.list(JOBS).await? {
            let job = decode(&id, &item.value)?;
            // A job created since the marker was written counted itself.
            if job.created_ms >= since {
                continue;
            }
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == job.state) {
                c.1 += 1;
            }
        }
        for (state, n) in counts {
            if n > 0 {
                ledger
                    .add(&ItemKey::new(COUNTS, state.as_str())?, n)
                    .await?;
            }
        }
        Ok(())
    }

    /// Moves one job from state `from` (none for a new job) to `to` in the counts.
    async fn count_move(&self, from: Option<JobState>, to: JobState) -> Result<()> {
        if from == Some(to) {
            return Ok(());
        }
        if let Some(from) = from {
            self.engine
                .ledger
                .add(&ItemKey::new(COUNTS, from.as_str())?, -1)
                .await?;
        }
        self.engine
            .ledger
            .add(&ItemKey::new(COUNTS, to.as_str())?, 1)
            .await?;
        Ok(())
    }

    /// Changes a job with compare-and-swap, retrying on conflicts. `change` returns false to
    /// leave the job as it is. Returns the job after the call and whether this call changed it.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Job) -> bool,
    ) -> Result<(Job, bool)> {
        let key = record_key(id)?;
        loop {
            let item = self
                .engine
                .ledger
                .get(&key)
                .await?
                .ok_or_else(|| Error::not_found(format!("job `{id}` does not exist")))?;
            let mut job = decode(id, &item.value)?;
            let before = job.state;
            if !change(&mut job) {
                return Ok((job, false));
            }
            job.updated_ms = now_ms();
            if self
                .engine
                .ledger
                .put(&key, encode(&job)?, Condition::Version(item.version))
                .await?
                .is_some()
            {
                self.count_move(Some(before), job.state).await?;
                return Ok((job, true));
            }
        }
    }

    /// Adds done work to a job's progress; returns the new count (never above the total).
    pub async fn add_progress(&self, id: &str, done: u64, total: u64) -> Result<u64> {
        let delta = i64::try_from(done).unwrap_or(i64::MAX);
        let now = self.engine.ledger.add(&progress_key(id)?, delta).await?;
        Ok(u64::try_from(now).unwrap_or(0).min(total))
    }

    /// Records that part `part` of a job has done `done` units in all (a slab's points so far),
    /// adding to the job's progress only what exceeds what was recorded for that part before:
    /// a part computed again (after a crash, or by two workers at once) is never counted twice.
    /// Returns the job's new count when anything was added.
    pub async fn part_progress(
        &self,
        id: &str,
        part: &str,
        done: u64,
        total: u64,
    ) -> Result<Option<u64>> {
        let key = job_item(id, &format!("counted/{part}"))?;
        loop {
            let item = self.engine.ledger.get(&key).await?;
            let counted = item
                .as_ref()
                .and_then(|i| std::str::from_utf8(&i.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            if done <= counted {
                return Ok(None);
            }
            let condition = item.map_or(Condition::Absent, |i| Condition::Version(i.version));
            let value = Bytes::from(done.to_string());
            if self
                .engine
                .ledger
                .put(&key, value, condition)
                .await?
                .is_some()
            {
                return self.add_progress(id, done - counted, total).await.map(Some);
            }
        }
    }

    /// Publishes an event on the events topic with the `job_id` attribute.
    pub async fn publish(&self, event: &JobEvent) -> Result<()> {
        let body = serde_json::to_vec(event)
            .map_err(|e| Error::internal("cannot encode event").with_source(e))?;
        let attributes = [("job_id".to_string(), event.job_id().to_string())]
            .into_iter()
            .collect();
        self.engine
            .topic
            .publish(
                &TopicName::new(EVENTS_TOPIC)?,
                Bytes::from(body),
                attributes,
            )
            .await?;
        Ok(())
    }

    /// Fan-in: records part `index` of a job's `group` (put-if-absent, so a redelivered part is
    /// counted once and keeps its first value) and returns every part of that group recorded so
    /// far, in index order. Whoever sees them all ends the job with [`JobStore::succeed`], which
    /// any number of callers may race to: only one wins.
    pub async fn record_part(
        &self,
        id: &str,
        group: &str,
        index: u64,
        value: Bytes,
    ) -> Result<Vec<Bytes>> {
        let prefix = format!("{group}/");
        let key = job_item(id, &format!("{prefix}{index:06}"))?;
        self.engine
            .ledger
            .put(&key, value, Condition::Absent)
            .await?;
        Ok(self
            .engine
            .ledger
            .list(&job_partition(id))
            .await?
            .into_iter()
            .filter(|(sort, _)| sort.starts_with(&prefix))
            .map(|(_, item)| item.value)
            .collect())
    }

    /// Ends a job as succeeded with `result` (unless it already ended) and tells its watchers.
    /// Returns the job when this call ended it, `None` when it had ended already.
    pub async fn succeed(&self, id: &str, result: serde_json::Value) -> Result<Option<Job>> {
        let (job, changed) = self
            .update(id, |job| {
                if job.state.is_terminal() {
                    return false;
                }
                job.state = JobState::Succeeded;
                job.progress.done = job.progress.total;
                job.result = Some(result.clone());
                true
            })
            .await?;
        if !changed {
            return Ok(None);
        }
        self.publish(&JobEvent::Result {
            job_id: id.to_string(),
            result,
        })
        .await?;
        Ok(Some(job))
    }

    /// Moves a queued job to running (a no-op for any other state).
    pub async fn start(&self, id: &str) -> Result<()> {
        self.update(id, |job| {
            let start = job.state == JobState::Queued;
            if start {
                job.state = JobState::Running;
            }
            start
        })
        .await
        .map(drop)
    }

    /// Ends a job as failed (unless it already ended) and tells its watchers; whether this call
    /// ended it.
    pub async fn fail(&self, id: &str, error: &str) -> Result<bool> {
        let (_, changed) = self
            .update(id, |job| {
                if job.state.is_terminal() {
                    return false;
                }
                job.state = JobState::Failed;
                job.error = Some(error.to_string());
                true
            })
            .await?;
        if changed {
            self.publish(&JobEvent::Failed {
                job_id: id.to_string(),
                error: error.to_string(),
            })
            .await?;
        }
        Ok(changed)
    }

    /// What a task that ends its job as failed returns: `Failed`, once the job is marked
    /// failed; a retry when marking it failed fails (the engine is down or its disk full), so
    /// that a job is never left `running` with nothing left to end it.
    pub async fn fail_with_task(&self, id: &str, error: String) -> nimbus_worker::Outcome {
        match self.fail(id, &error).await {
            Ok(_) => nimbus_worker::Outcome::Failed(error),
            Err(e) => {
                tracing::warn!(job_id = id, error = %e, "could not mark the job failed; the task will be retried");
                nimbus_worker::Outcome::RetryAfter {
                    delay: std::time::Duration::from_secs(1),
                    reason: format!("{error}; and the job could not be marked failed: {e}"),
                }
            }
        }
    }

    /// Fails the job task `task_id` is part of with `error` (unless it ended already); whether
    /// this call ended it. A task of no job (its id names none, or a job that does not exist) is
    /// left alone.
    pub async fn fail_for_task(&self, task_id: &str, error: &str) -> Result<bool> {
        let Some(id) = job_of_task(task_id) else {
            return Ok(false);
        };
        match self.get(id).await {
            Err(e) if e.kind() == nimbus_core::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
            Ok(_) => self.fail(id, error).await,
        }
    }

    /// A new job record in the queued state.
    pub fn new_job(kind: &str, params: serde_json::Value, total: u64) -> Job {
        let now = now_ms();
        Job {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_string(),
            params,
            state: JobState::Queued,
            progress: Progress { done: 0, total },
            result: None,
            error: None,
            created_ms: now,
            updated_ms: now,
        }
    }
}

/// A job store on a fresh embedded engine in `dir`, prepared with `queues`, for tests.
#[cfg(test)]
pub(crate) async fn test_store(dir: &std::path::Path, queues: &[&str]) -> JobStore {
    let engine = nimbus_sqlite::SqliteEngine::open(dir.join("db"), Default::default())
        .and_then(|sqlite| sqlite.into_engine(dir.join("blobs")))
        .expect("an embedded engine in a temporary directory");
    let store = JobStore::new(engine);
    store.prepare(queues).await.expect("the store's queues");
    store
}

//! The generator and solver handlers of the atoms pipeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::task::{ATTR_KIND, ATTR_TASK_ID};
use nimbus_core::{Condition, Error, Job, JobEvent, OutgoingMessage, QueueName, Result};
use nimbus_worker::{Handler, Outcome, TaskContext};
use object_store::path::Path as BlobPath;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kernel::{self, Atoms, Minimum};
use super::{generate, slabs, AtomsParams};
use crate::jobs::{blob_error, job_item as job_key, now_ms, JobStore};

/// The generator's queue and handler kind.
pub const GENERATE: &str = "atoms-generate";
/// The solvers' queue and handler kind.
pub const SOLVE: &str = "atoms-solve";
/// At most one progress event per slab in this interval (~20 a second).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Serialize, Deserialize)]
struct GenerateMessage {
    job_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SolveMessage {
    job_id: String,
    z0: u32,
    z1: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Partial {
    value: f64,
    point: [u32; 3],
}

fn blob(job_id: &str, name: &str) -> BlobPath {
    BlobPath::from(format!("jobs/{job_id}/{name}"))
}

/// An atoms job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtomsResult {
    /// The smallest potential on the grid.
    pub minimum: f64,
    /// Where it is (x, y, z).
    pub point: [u32; 3],
    /// The grid's edge.
    pub grid_size: u32,
    /// How many atoms.
    pub atom_count: usize,
    /// Which kernel computed it (`avx512`, `avx2`, `portable`, `cuda ...`).
    pub backend: String,
    /// From the job's creation to its end.
    pub elapsed_ms: i64,
    /// The heat map of the plane of the minimum.
    pub picture: String,
}

/// Starts a created atoms job: the seed's JSON object (without atoms yet) in blobs, and the
/// generator's message.
pub async fn start_job(store: &JobStore, job_id: &str, n: u32, count: u32) -> Result<()> {
    let seed = json!({ "Grid size": n, "Atom count": count, "Atom values": null, "Result": null });
    write_seed_object(store, job_id, &seed).await?;
    let body = serde_json::to_vec(&GenerateMessage {
        job_id: job_id.to_string(),
    })
    .map_err(|e| Error::internal("cannot encode").with_source(e))?;
    let message = OutgoingMessage::new(body)
        .attribute(ATTR_KIND, GENERATE)
        .attribute(ATTR_TASK_ID, format!("{job_id}/generate"));
    store
        .engine()
        .queue
        .send(&QueueName::new(GENERATE)?, message)
        .await
        .map(drop)
}

/// Maps a step's error to the worker outcome: transient errors retry, others fail the job.
async fn outcome(store: &JobStore, job_id: &str, result: Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::done(),
        Err(e) if e.is_retryable() => Outcome::RetryAfter {
            delay: Duration::from_secs(1),
            reason: e.to_string(),
        },
        Err(e) => store.fail_with_task(job_id, e.to_string()).await,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(task: &TaskContext) -> std::result::Result<T, Outcome> {
    serde_json::from_slice(&task.delivery.body)
        .map_err(|e| Outcome::Failed(format!("malformed message: {e}")))
}

/// The seed's JSON object for a job, kept in blobs beside the atoms.
async fn write_seed_object(
    store: &JobStore,
    job_id: &str,
    object: &serde_json::Value,
) -> Result<()> {
    let bytes =
        serde_json::to_vec(object).map_err(|e| Error::internal("cannot encode").with_source(e))?;
    store
        .engine()
        .blobs
        .put(&blob(job_id, "job.json"), Bytes::from(bytes).into())
        .await
        .map_err(blob_error)?;
    Ok(())
}

fn seed_object(n: u32, atoms: &Atoms, result: Option<&serde_json::Value>) -> serde_json::Value {
    let values: Vec<[f32; 4]> = (0..atoms.len())
        .map(|i| [atoms.x[i], atoms.y[i], atoms.z[i], atoms.e[i]])
        .collect();
    json!({ "Grid size": n, "Atom count": atoms.len(), "Atom values": values, "Result": result })
}

/// Makes a job's atoms and fans its slabs out to the solvers.
#[derive(Debug, Clone)]
pub struct GenerateHandler {
    store: JobStore,
}

impl GenerateHandler {
    /// A generator over `store`.
    pub fn new(store: JobStore) -> Self {
        Self { store }
    }

    async fn run(&self, job_id: &str) -> Result<()> {
        let job = self.store.get(job_id).await?;
        if job.state.is_terminal() {
            return Ok(());
        }
        let params: AtomsParams = serde_json::from_value(job.params.clone())
            .map_err(|e| Error::invalid(format!("job parameters: {e}")))?;
        let n = params.grid_size;
        let atoms = match &params.atoms_key {
            Some(key) => {
                let bytes = self
                    .store
                    .engine()
                    .blobs
                    .get(&BlobPath::from(key.as_str()))
                    .await
                    .map_err(blob_error)?;
                let bytes = bytes.bytes().await.map_err(blob_error)?;
                Atoms::from_bytes(&bytes)
                    .ok_or_else(|| Error::invalid(format!("uploaded atoms `{key}` are corrupt")))?
            }
            None => {
                let seed = params.seed.unwrap_or_else(|| job.created_ms.unsigned_abs());
                generate(params.atom_count.unwrap_or(1), n, seed)
            }
        };
        let blobs = &self.store.engine().blobs;
        blobs
            .put(
                &blob(job_id, "atoms.bin"),
                Bytes::from(atoms.to_bytes()).into(),
            )
            .await
            .map_err(blob_error)?;
        write_seed_object(&self.store, job_id, &seed_object(n, &atoms, None)).await?;
        let parts = slabs(n);
        self.store
            .engine()
            .ledger
            .put(
                &job_key(job_id, "slabs")?,
                Bytes::from(parts.len().to_string()),
                Condition::Always,
            )
            .await?;
        self.store.start(job_id).await?;
        let messages = parts
            .iter()
            .map(|&(z0, z1)| {
                let body = serde_json::to_vec(&SolveMessage {
                    job_id: job_id.to_string(),
                    z0,
                    z1,
                })
                .unwrap_or_default();
                OutgoingMessage::new(body)
                    .attribute(ATTR_KIND, SOLVE)
                    .attribute(ATTR_TASK_ID, format!("{job_id}/slab/{z0}"))
            })
            .collect();
        self.store
            .engine()
            .queue
            .send_batch(&QueueName::new(SOLVE)?, messages)
            .await?;
        tracing::info!(
            job_id,
            grid = n,
            atoms = atoms.len(),
            slabs = parts.len(),
            "atoms generated"
        );
        Ok(())
    }
}

#[async_trait]
impl Handler for GenerateHandler {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        let msg: GenerateMessage = match decode(task) {
            Ok(m) => m,
            Err(o) => return o,
        };
        outcome(&self.store, &msg.job_id, self.run(&msg.job_id).await).await
    }
}

/// Recently used atom sets by job id, oldest first.
type AtomsCache = Vec<(String, Arc<Atoms>)>;

/// Computes slabs, reports progress and reduces the last slab into the result.
#[derive(Clone)]
pub struct SolveHandler {
    store: JobStore,
    atoms: Arc<Mutex<AtomsCache>>,
}

impl std::fmt::Debug for SolveHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolveHandler").finish_non_exhaustive()
    }
}

impl SolveHandler {
    /// A solver over `store`.
    pub fn new(store: JobStore) -> Self {
        Self {
            store,
            atoms: Arc::default(),
        }
    }

    /// A job's atoms, from a small per-process cache (slabs of one job share them).
    async fn atoms(&self, job_id: &str) -> Result<Arc<Atoms>> {
        if let Some((_, a)) = self.lock_cache().iter().find(|(id, _)| id == job_id) {
            return Ok(a.clone());
        }
        let bytes = self
            .store
            .engine()
            .blobs
            .get(&blob(job_id, "atoms.bin"))
            .await
            .map_err(blob_error)?;
        let bytes = bytes.bytes().await.map_err(blob_error)?;
        let atoms = Arc::new(
            Atoms::from_bytes(&bytes).ok_or_else(|| Error::internal("stored atoms are corrupt"))?,
        );
        let mut cache = self.lock_cache();
        cache.push((job_id.to_string(), atoms.clone()));
        if cache.len() > 4 {
            cache.remove(0);
        }
        Ok(atoms)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, AtomsCache> {
        self.atoms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a slab's points so far (each slab counted once, however often it is computed)
    /// and tells the watchers when the job's count rose.
    async fn publish_progress(&self, job_id: &str, z0: u32, points: u64, total: u64) -> Result<()> {
        let Some(done) = self
            .store
            .part_progress(job_id, &format!("slab/{z0:05}"), points, total)
            .await?
        else {
            return Ok(());
        };
        self.store
            .publish(&JobEvent::Progress {
                job_id: job_id.to_string(),
                done,
                total,
            })
            .await
    }

    async fn run(&self, msg: &SolveMessage, task: &TaskContext) -> Result<()> {
        let job = self.store.get(&msg.job_id).await?;
        if job.state.is_terminal() {
            return Ok(());
        }
        let params: AtomsParams = serde_json::from_value(job.params.clone())
            .map_err(|e| Error::invalid(format!("job parameters: {e}")))?;
        let (n, total) = (params.grid_size, job.progress.total);
        let atoms = self.atoms(&msg.job_id).await?;
        let (this, job_id, cancel) = (self.clone(), msg.job_id.clone(), task.cancel.clone());
        let runtime = tokio::runtime::Handle::current();
        let (z0, z1) = (msg.z0, msg.z1);
        let minimum = tokio::task::spawn_blocking(move || {
            let (mut stopped, mut points, mut published) = (false, 0u64, Instant::now());
            let m = super::solve_slab(&atoms, n, z0, z1, |more| {
                if stopped || cancel.is_cancelled() {
                    stopped = true;
                    return;
                }
                points += more;
                if published.elapsed() >= PROGRESS_INTERVAL {
                    published = Instant::now();
                    let publishing = this.publish_progress(&job_id, z0, points, total);
                    if let Err(e) = runtime.block_on(publishing) {
                        tracing::warn!(job_id, error = %e, "progress not published");
                    }
                }
            });
            (m, stopped, points)
        })
        .await
        .map_err(|e| Error::internal("solver thread failed").with_source(e))?;
        let (Some(minimum), false, points) = minimum else {
            return Err(Error::new(
                nimbus_core::ErrorKind::Unavailable,
                "solver stopped before the slab was done",
            ));
        };
        self.publish_progress(&msg.job_id, msg.z0, points, total)
            .await?;
        let partial = serde_json::to_vec(&Partial {
            value: minimum.value,
            point: minimum.point,
        })
        .unwrap_or_default();
        let partials = self
            .store
            .record_part(&msg.job_id, "slab", u64::from(msg.z0), partial.into())
            .await?;
        self.reduce_if_complete(&job, n, &partials).await
    }

    /// When every slab is recorded: the global minimum, the picture, the result. Any number of
    /// solvers may get here for one job; only the one whose write ends the job publishes.
    async fn reduce_if_complete(&self, job: &Job, n: u32, partials: &[Bytes]) -> Result<()> {
        let job_id = job.id.as_str();
        let ledger = &self.store.engine().ledger;
        let expected: usize = match ledger.get(&job_key(job_id, "slabs")?).await? {
            Some(item) => String::from_utf8_lossy(&item.value)
                .parse()
                .unwrap_or(usize::MAX),
            None => return Ok(()),
        };
        if partials.len() < expected {
            return Ok(());
        }
        let partials: Vec<Partial> = partials
            .iter()
            .map(|bytes| {
                serde_json::from_slice(bytes).map_err(|e| {
                    Error::internal("a partial minimum is unreadable (not finite?)").with_source(e)
                })
            })
            .collect::<Result<_>>()?;
        let best = partials
            .iter()
            .map(|p| Minimum {
                value: p.value,
                point: p.point,
            })
            .reduce(|a, b| a.min(b, n))
            .ok_or_else(|| Error::internal("no partial minima"))?;
        let atoms = self.atoms(job_id).await?;
        let z = best.point[2];
        let plane = tokio::task::spawn_blocking({
            let atoms = atoms.clone();
            move || kernel::plane(&atoms, n, z)
        })
        .await
        .map_err(|e| Error::internal("heat map thread failed").with_source(e))?;
        let png = super::render_heatmap(&plane, n, (best.point[0], best.point[1]))
            .map_err(Error::internal)?;
        self.store
            .engine()
            .blobs
            .put(&blob(job_id, "plane.png"), Bytes::from(png).into())
            .await
            .map_err(blob_error)?;
        let result = AtomsResult {
            minimum: best.value,
            point: best.point,
            grid_size: n,
            atom_count: atoms.len(),
            backend: super::backend_name(),
            elapsed_ms: now_ms() - job.created_ms,
            picture: format!("/api/v1/jobs/{job_id}/plane.png"),
        };
        let result = serde_json::to_value(&result)
            .map_err(|e| Error::internal("cannot encode").with_source(e))?;
        // The watchers hear of the end first, whatever happens to the blob write.
        if self.store.succeed(job_id, result.clone()).await?.is_some() {
            write_seed_object(&self.store, job_id, &seed_object(n, &atoms, Some(&result))).await?;
            tracing::info!(job_id, minimum = best.value, point = ?best.point, "atoms job done");
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for SolveHandler {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        let msg: SolveMessage = match decode(task) {
            Ok(m) => m,
            Err(o) => return o,
        };
        outcome(&self.store, &msg.job_id, self.run(&msg, task).await).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 16): a slab computed again (after a crash its claim is taken over and
    /// the slab restarts) counted its points twice, and the bar reached 100 % early.
    fn full_disk() -> Error {
        Error::new(
            nimbus_core::ErrorKind::Unavailable,
            "database or disk is full",
        )
    }

    /// A ledger that refuses every write, as a full disk does.
    struct Full(Arc<dyn nimbus_core::Ledger>);

    #[async_trait]
    impl nimbus_core::Ledger for Full {
        async fn put(
            &self,
            _key: &nimbus_core::ItemKey,
            _value: Bytes,
            _condition: Condition,
        ) -> Result<Option<u64>> {
            Err(full_disk())
        }
        async fn get(&self, key: &nimbus_core::ItemKey) -> Result<Option<nimbus_core::Item>> {
            self.0.get(key).await
        }
        async fn delete(&self, _key: &nimbus_core::ItemKey, _condition: Condition) -> Result<bool> {
            Err(full_disk())
        }
        async fn add(&self, _key: &nimbus_core::ItemKey, _delta: i64) -> Result<i64> {
            Err(full_disk())
        }
        async fn list(&self, partition: &str) -> Result<Vec<(String, nimbus_core::Item)>> {
            self.0.list(partition).await
        }
    }

    /// Regression (issue 16): a step that failed for good while its job could not be marked
    /// failed (a full disk) was acknowledged as failed all the same, and its job stayed `running`
    /// with nothing left to end it. The step is retried now, until the job is marked.
    #[tokio::test]
    async fn a_step_that_fails_while_its_job_cannot_be_marked_failed_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::jobs::test_store(dir.path(), &[]).await;
        let job = JobStore::new_job(super::super::KIND, json!({}), 1);
        store.create(&job).await.unwrap();
        let ledger = store.engine().ledger.clone();
        let full = JobStore::new(store.engine().clone().with_ledger(Arc::new(Full(ledger))));
        let bad = || Err(Error::internal("slab 8 is corrupt"));
        let retried = outcome(&full, &job.id, bad()).await;
        assert!(
            matches!(&retried, Outcome::RetryAfter { reason, .. } if reason.contains("could not be marked failed")),
            "{retried:?}"
        );
        assert_eq!(
            store.get(&job.id).await.unwrap().state,
            nimbus_core::JobState::Queued
        );
        let failed = outcome(&store, &job.id, bad()).await;
        assert_eq!(failed, Outcome::Failed("slab 8 is corrupt".into()));
        let job = store.get(&job.id).await.unwrap();
        assert_eq!(
            (job.state, job.error.as_deref()),
            (nimbus_core::JobState::Failed, Some("slab 8 is corrupt"))
        );
    }

    #[tokio::test]
    async fn a_slab_computed_twice_counts_its_points_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::jobs::test_store(dir.path(), &[SOLVE]).await;
        let engine = store.engine().clone();
        let n = 24;
        let params = json!({ "grid_size": n, "atom_count": 50, "seed": 1 });
        let job = JobStore::new_job(super::super::KIND, params, u64::from(n).pow(3));
        store.create(&job).await.unwrap();
        let atoms = generate(50, n, 1);
        engine
            .blobs
            .put(
                &blob(&job.id, "atoms.bin"),
                Bytes::from(atoms.to_bytes()).into(),
            )
            .await
            .unwrap();
        let solver = SolveHandler::new(store.clone());
        let (z0, z1) = (0, 8);
        let body = serde_json::to_vec(&SolveMessage {
            job_id: job.id.clone(),
            z0,
            z1,
        })
        .unwrap();
        for attempt in 1..=2 {
            let task = TaskContext {
                task_id: format!("{}/slab/{z0}", job.id),
                kind: SOLVE.into(),
                worker_id: format!("w{attempt}"),
                queue: QueueName::new(SOLVE).unwrap(),
                delivery: nimbus_core::Delivery {
                    message_id: "m".into(),
                    receipt: nimbus_core::Receipt(format!("r{attempt}")),
                    body: Bytes::from(body.clone()),
                    attributes: Default::default(),
                    receive_count: attempt,
                    sent_at: std::time::SystemTime::now(),
                    group_id: None,
                },
                engine: engine.clone(),
                cancel: tokio_util::sync::CancellationToken::new(),
            };
            let outcome = solver.handle(&task).await;
            assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
        }
        let slab_points = u64::from(n * n * (z1 - z0));
        assert_eq!(store.get(&job.id).await.unwrap().progress.done, slab_points);
    }
}

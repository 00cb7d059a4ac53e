//! The mixed workload the harness drives while it breaks things: sessions of shell tasks whose
//! effects go through the harness's pipe (a few designed to fail, one designed to kill its
//! worker), atoms jobs and classify requests through the web tier; and the book of what was
//! accepted, which the verdict holds the platform to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use nimbus_core::{Engine, QueueName};
use nimbus_workloads::sessions;
use nimbus_workloads::tasks::{RESULTS_QUEUE, TASKS_QUEUE};
use tokio_util::sync::CancellationToken;

/// What a task of the workload is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Sleep a little, then write its effect: must succeed with exactly one effect (or more
    /// only inside the documented window).
    Effect,
    /// Exit with status 3: must be reported failed, never retried.
    Fails,
    /// Kill its own worker (`kill -9 $PPID`), as a task that exhausts its machine would: must
    /// be failed for good once its workers died under it `max_crashes` times (or dead-lettered,
    /// where the queue allows fewer receives), and take no other task with it.
    Poison,
}

/// One submitted session.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The session id; task `n` (from 1) is `<session>-<n>`.
    pub session: String,
    /// What each task does.
    pub plans: Vec<Plan>,
}

/// An accepted atoms job and what it asked.
#[derive(Debug, Clone)]
pub struct AtomsJob {
    /// The job id.
    pub id: String,
    /// Grid size.
    pub grid: u32,
    /// Atoms.
    pub atoms: u32,
    /// Generator seed.
    pub seed: u64,
}

/// An accepted classify job and its image.
#[derive(Debug, Clone)]
pub struct ClassifyJob {
    /// The job id.
    pub id: String,
    /// The image's name.
    pub image: String,
}

/// Work that was refused (the platform said no, or was down): not held against it.
#[derive(Debug, Clone, Default)]
pub struct Refused {
    /// How many.
    pub count: u64,
    /// The first few reasons.
    pub reasons: Vec<String>,
}

/// Everything submitted, accepted or refused.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// Accepted task sessions.
    pub batches: Vec<Batch>,
    /// Accepted atoms jobs.
    pub atoms: Vec<AtomsJob>,
    /// Accepted classify jobs.
    pub classify: Vec<ClassifyJob>,
    /// Refusals by kind of work (`tasks`, `atoms`, `classify`).
    pub refused: BTreeMap<&'static str, Refused>,
}

impl Book {
    fn refuse(&mut self, what: &'static str, reason: String) {
        let r = self.refused.entry(what).or_default();
        r.count += 1;
        if r.reasons.len() < 3 {
            r.reasons.push(reason);
        }
    }

    /// Tasks accepted with each plan.
    pub fn tasks(&self, plan: Plan) -> usize {
        self.batches
            .iter()
            .flat_map(|b| &b.plans)
            .filter(|p| **p == plan)
            .count()
    }
}

/// How much work to offer.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Mean time between task sessions.
    pub session_every: Duration,
    /// Most tasks per session.
    pub session_tasks: usize,
    /// Mean time between atoms jobs (zero: none).
    pub atoms_every: Duration,
    /// Mean time between classify requests (zero: none).
    pub classify_every: Duration,
}

/// The workload's driver, shared by its loops.
#[derive(Clone)]
pub struct Driver {
    /// The engine, for task sessions and reports.
    pub engine: Engine,
    /// The web tier's base URL.
    pub url: String,
    /// The command that writes a task's effect.
    pub effect: String,
    /// Images to classify, by name.
    pub images: Arc<Vec<(String, Bytes)>>,
    /// What was accepted.
    pub book: Arc<Mutex<Book>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The longest the harness waits for one answer of the web tier.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

impl Driver {
    /// A driver over `engine` and the web tier at `url`.
    pub fn new(engine: Engine, url: String, effect: String, images: Vec<(String, Bytes)>) -> Self {
        Self {
            engine,
            url,
            effect,
            images: Arc::new(images),
            book: Arc::new(Mutex::new(Book::default())),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `method url` with `body`; the status and the JSON answer, or why there was none.
    pub async fn http(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(http::StatusCode, serde_json::Value), String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer in {HTTP_TIMEOUT:?}"))?
    }

    /// Submits one session of `plans`.
    pub async fn submit_tasks(&self, plans: Vec<Plan>, rng: &mut fastrand::Rng) {
        let lines: Vec<String> = plans
            .iter()
            .map(|plan| match plan {
                Plan::Effect => format!("sleep 0.{:02}; {}", rng.u32(0..30), self.effect),
                Plan::Fails => "exit 3".to_string(),
                Plan::Poison => "kill -KILL $PPID; sleep 5".to_string(),
            })
            .collect();
        let (queue, reply) = queues();
        match sessions::submit(&self.engine, &queue, &reply, &lines, |_| {}).await {
            Ok(session) => self.book().batches.push(Batch {
                session: session.id,
                plans,
            }),
            Err(e) => self.book().refuse("tasks", e.to_string()),
        }
    }

    /// Submits an atoms job of `grid`^3 points and `atoms` generated atoms.
    async fn submit_atoms(&self, grid: u32, atoms: u32, seed: u64) {
        let body = serde_json::json!({
            "kind": "atoms",
            "params": { "grid_size": grid, "atom_count": atoms, "seed": seed },
        });
        let answer = self
            .http(
                http::Method::POST,
                "/api/v1/jobs",
                "application/json",
                Bytes::from(body.to_string()),
            )
            .await;
        match accepted_id(answer, "id") {
            Ok(id) => self.book().atoms.push(AtomsJob {
                id,
                grid,
                atoms,
                seed,
            }),
            Err(e) => self.book().refuse("atoms", e),
        }
    }

    /// Classifies `image` and waits up to `wait` seconds: the job id, or why not.
    pub async fn classify(&self, image: usize, wait: u32) -> Result<(String, String), String> {
        let (name, bytes) = self.images[image].clone();
        let path = format!("/api/v1/classify?wait={wait}&name={name}");
        let answer = self
            .http(http::Method::POST, &path, "application/octet-stream", bytes)
            .await;
        accepted_id(answer, "job_id").map(|id| (id, name))
    }

    /// Offers work at `rates` until `stop`; the randomness comes from `seed`.
    pub async fn offer(&self, rates: Rates, seed: u64, stop: CancellationToken) {
        let mut loops = tokio::task::JoinSet::new();
        let me = self.clone();
        let s = stop.clone();
        loops.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            while pause(&mut rng, rates.session_every, &s).await {
                let plans = (0..rng.usize(1..=rates.session_tasks.max(1)))
                    .map(|_| {
                        if rng.u32(0..100) < 3 {
                            Plan::Fails
                        } else {
                            Plan::Effect
                        }
                    })
                    .collect();
                me.submit_tasks(plans, &mut rng).await;
            }
        });
        if !rates.atoms_every.is_zero() {
            let me = self.clone();
            let s = stop.clone();
            loops.spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ 0xa70b5);
                while pause(&mut rng, rates.atoms_every, &s).await {
                    let (grid, atoms, seed) = (rng.u32(12..=32), rng.u32(10..=80), rng.u64(..));
                    me.submit_atoms(grid, atoms, seed).await;
                }
            });
        }
        if !rates.classify_every.is_zero() && !self.images.is_empty() {
            let me = self.clone();
            let s = stop.clone();
            loops.spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ 0xc1a55);
                while pause(&mut rng, rates.classify_every, &s).await {
                    let image = rng.usize(0..me.images.len());
                    match me.classify(image, 0).await {
                        Ok((id, image)) => me.book().classify.push(ClassifyJob { id, image }),
                        Err(e) => me.book().refuse("classify", e),
                    }
                }
            });
        }
        while loops.join_next().await.is_some() {}
    }

    /// Moves the workers' task reports into the ledger until `stop`, as `nimbus tasks check`
    /// does; a failure (the disk is full) is tried again later.
    pub async fn collect(&self, stop: CancellationToken) {
        let (_, reply) = queues();
        while !stop.is_cancelled() {
            if let Err(e) =
                sessions::collect_reports(&self.engine, &reply, Duration::from_millis(500)).await
            {
                tracing::debug!(error = %e, "collecting reports failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The task queue and the report queue.
pub fn queues() -> (QueueName, QueueName) {
    (
        QueueName::new(TASKS_QUEUE).expect("a valid queue name"),
        QueueName::new(RESULTS_QUEUE).expect("a valid queue name"),
    )
}

/// Waits an exponentially distributed time of mean `mean`; false once `stop` fires.
async fn pause(rng: &mut fastrand::Rng, mean: Duration, stop: &CancellationToken) -> bool {
    let wait = mean.mul_f64(-(1.0 - rng.f64()).ln().min(5.0));
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// The job id from a 201 or 202 answer, or why the work was not accepted.
fn accepted_id(
    answer: Result<(http::StatusCode, serde_json::Value), String>,
    field: &str,
) -> Result<String, String> {
    let (status, json) = answer?;
    if !(status == http::StatusCode::CREATED || status == http::StatusCode::ACCEPTED) {
        return Err(format!(
            "{status}: {}",
            json.get("error").and_then(|e| e.as_str()).unwrap_or("")
        ));
    }
    json.get(field)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{status} without `{field}`: {json}"))
}

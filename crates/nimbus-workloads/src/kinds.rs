//! Every job kind in one table: its name, the queues its work goes through, the handler kinds
//! that serve them and where it runs; and [`handlers`], which registers every kind's handlers on
//! a worker. The web tier, `nimbus up`, `nimbus aws up` and `nimbus worker` read it, so adding a
//! kind touches this file and the kind's own module.

use nimbus_worker::{Handler, Handlers, Outcome, TaskContext};

use crate::jobs::JobStore;
use crate::{atoms, classify, tasks, video};

/// Where a kind's work runs under `nimbus up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// In `nimbus up`'s own process (short, CPU-bound steps with a live progress bar).
    Platform,
    /// In `nimbus worker` processes that the autoscaler starts and stops.
    App,
}

/// How a kind's work is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitter {
    /// The web tier, at `POST /api/v1/jobs` with `{"kind": NAME, "params": ...}`.
    JobsApi,
    /// The web tier, at a route of its own (such as `POST /api/v1/classify`).
    Route(&'static str),
    /// `nimbus tasks submit` (a session of tasks, not a job record).
    Sessions,
}

/// One job kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKind {
    /// Its name: a job record's `kind`, and what `POST /api/v1/jobs` takes.
    pub name: &'static str,
    /// The queues workers receive its work from.
    pub queues: &'static [&'static str],
    /// Queues it answers on (nobody works on them; clients read them).
    pub replies: &'static [&'static str],
    /// The handler kinds (the `kind` attribute of its messages) serving those queues.
    pub handlers: &'static [&'static str],
    /// Where it runs.
    pub tier: Tier,
    /// How its work is submitted.
    pub submitted_by: Submitter,
}

/// Seed 000's atom-effect calculator.
pub const ATOMS: JobKind = JobKind {
    name: atoms::KIND,
    queues: &[atoms::GENERATE, atoms::SOLVE],
    replies: &[],
    handlers: &[atoms::GENERATE, atoms::SOLVE],
    tier: Tier::Platform,
    submitted_by: Submitter::JobsApi,
};

/// Seeds 001 and 004's image recognition.
pub const CLASSIFY: JobKind = JobKind {
    name: classify::KIND,
    queues: &[classify::REQUESTS],
    replies: &[],
    handlers: &[classify::KIND],
    tier: Tier::App,
    submitted_by: Submitter::Route("/api/v1/classify"),
};

/// Seed 002's CloudKon tasks.
pub const TASKS: JobKind = JobKind {
    name: tasks::KIND,
    queues: &[tasks::TASKS_QUEUE],
    replies: &[tasks::RESULTS_QUEUE],
    handlers: &[tasks::KIND],
    tier: Tier::App,
    submitted_by: Submitter::Sessions,
};

/// Seed 002's Animoto job: images to a video.
pub const VIDEO: JobKind = JobKind {
    name: video::KIND,
    queues: &[video::QUEUE],
    replies: &[],
    handlers: &[video::KIND],
    tier: Tier::App,
    submitted_by: Submitter::JobsApi,
};

/// Every kind.
pub const ALL: [JobKind; 4] = [ATOMS, CLASSIFY, TASKS, VIDEO];

/// The names of the kinds `POST /api/v1/jobs` creates, for messages (`atoms, video`).
pub fn jobs_api_kinds() -> String {
    let names: Vec<&str> = ALL
        .iter()
        .filter(|k| k.submitted_by == Submitter::JobsApi)
        .map(|k| k.name)
        .collect();
    names.join(", ")
}

/// The queues the web tier sends jobs to.
pub fn web_queues() -> Vec<&'static str> {
    ALL.iter()
        .filter(|k| k.submitted_by != Submitter::Sessions)
        .flat_map(|k| k.queues.iter().copied())
        .collect()
}

/// The queues workers of `tier` receive from.
pub fn queues_of(tier: Tier) -> Vec<&'static str> {
    ALL.iter()
        .filter(|k| k.tier == tier)
        .flat_map(|k| k.queues.iter().copied())
        .collect()
}

/// Every queue of every kind, worked on or answered on (what a deployment provisions).
pub fn all_queues() -> Vec<&'static str> {
    ALL.iter()
        .flat_map(|k| k.queues.iter().chain(k.replies).copied())
        .collect()
}

/// What a worker's handlers need beyond the job store.
#[derive(Clone, Default)]
pub struct WorkerOptions {
    /// Which shell commands tasks may run.
    pub exec: tasks::ExecPolicy,
    /// How videos are made (ffmpeg, what may be fetched).
    pub video: video::VideoOptions,
    /// The image model, loaded once; without one, no classify handler is registered.
    #[cfg(feature = "classify")]
    pub classifier: Option<std::sync::Arc<classify::model::Classifier>>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("exec", &self.exec)
            .field("video", &self.video)
            .finish_non_exhaustive()
    }
}

/// A job kind's handler: runs `H`, and when the runtime fails one of its tasks without running
/// it (its workers kept dying under it), fails the task's job, which would otherwise wait for
/// that task for ever.
pub struct JobHandler<H> {
    store: JobStore,
    inner: H,
}

impl<H> JobHandler<H> {
    /// `inner`, failing its jobs in `store`.
    pub fn new(store: &JobStore, inner: H) -> Self {
        Self {
            store: store.clone(),
            inner,
        }
    }
}

#[async_trait::async_trait]
impl<H: Handler> Handler for JobHandler<H> {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        self.inner.handle(task).await
    }

    async fn abandoned(&self, task: &TaskContext, reason: &str) -> Result<(), String> {
        let error = format!("task `{}`: {reason}", task.task_id);
        let failed = self
            .store
            .fail_for_task(&task.task_id, &error)
            .await
            .map_err(|e| e.to_string())?;
        if failed {
            tracing::warn!(task_id = %task.task_id, reason, "a job fails: one of its tasks failed for good");
        }
        Ok(())
    }
}

/// Every kind's handlers, over `store`.
pub fn handlers(store: &JobStore, options: &WorkerOptions) -> Result<Handlers, String> {
    let videos = video::VideoRunner::new(store.engine().clone(), options.video.clone())?;
    let handlers = Handlers::default()
        .with(
            tasks::KIND,
            tasks::TaskHandler::new(options.exec.clone()).with_videos(videos.clone()),
        )
        .with(
            video::KIND,
            JobHandler::new(store, video::VideoHandler::new(store.clone(), videos)),
        )
        .with(
            atoms::GENERATE,
            JobHandler::new(store, atoms::GenerateHandler::new(store.clone())),
        )
        .with(
            atoms::SOLVE,
            JobHandler::new(store, atoms::SolveHandler::new(store.clone())),
        );
    #[cfg(feature = "classify")]
    if let Some(model) = &options.classifier {
        return Ok(handlers.with(
            classify::KIND,
            JobHandler::new(
                store,
                classify::ClassifyHandler::new(store.clone(), model.clone()),
            ),
        ));
    }
    Ok(handlers)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unused;

    #[async_trait::async_trait]
    impl Handler for Unused {
        async fn handle(&self, _task: &TaskContext) -> Outcome {
            unreachable!("the runtime fails the task without running it")
        }
    }

    #[tokio::test]
    async fn a_task_the_runtime_fails_for_good_fails_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::jobs::test_store(dir.path(), &[]).await;
        let engine = store.engine().clone();
        let job = JobStore::new_job(atoms::KIND, serde_json::json!({}), 1);
        store.create(&job).await.unwrap();
        let task = |task_id: String| TaskContext {
            task_id,
            kind: atoms::SOLVE.into(),
            worker_id: "w".into(),
            queue: nimbus_core::QueueName::new(atoms::SOLVE).unwrap(),
            delivery: nimbus_core::Delivery {
                message_id: "m".into(),
                receipt: nimbus_core::Receipt("r".into()),
                body: bytes::Bytes::new(),
                attributes: Default::default(),
                receive_count: 4,
                sent_at: std::time::SystemTime::now(),
                group_id: None,
            },
            engine: engine.clone(),
            cancel: Default::default(),
        };
        let handler = JobHandler::new(&store, Unused);
        let why = "its worker ended while running it 3 times";
        let slab = task(format!("{}/slab/8", job.id));
        handler.abandoned(&slab, why).await.unwrap();
        let failed = store.get(&job.id).await.unwrap();
        assert_eq!(failed.state, nimbus_core::JobState::Failed);
        assert_eq!(
            failed.error.as_deref(),
            Some(format!("task `{}/slab/8`: {why}", job.id).as_str())
        );
        handler.abandoned(&slab, why).await.unwrap();
        let no_job = task("a-session-task".into());
        handler.abandoned(&no_job, why).await.unwrap();
        let gone = task("0190ffff-0000-7000-8000-000000000000/generate".into());
        handler.abandoned(&gone, why).await.unwrap();
    }

    #[tokio::test]
    async fn the_table_names_each_queue_once_and_its_handlers_are_registered() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::jobs::test_store(dir.path(), &[]).await;
        let registered = handlers(&store, &WorkerOptions::default()).unwrap();
        for kind in ALL.iter().filter(|k| k.name != classify::KIND) {
            for h in kind.handlers {
                assert!(
                    registered.kinds().contains(h),
                    "{h} of {} is registered",
                    kind.name
                );
            }
        }
        let all = all_queues();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "a queue belongs to one kind");
        assert_eq!(queues_of(Tier::Platform), ATOMS.queues);
        assert_eq!(jobs_api_kinds(), "atoms, video");
    }
}

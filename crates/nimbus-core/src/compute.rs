//! The `ComputeProvider` service: machines that run workers, listed, launched, started, stopped
//! and terminated by the autoscaler (EC2, or worker processes on this machine).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::Result;

/// An instance's life-cycle state (EC2's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Starting; not yet running.
    Pending,
    /// Running (its worker may still be starting).
    Running,
    /// Stopping.
    Stopping,
    /// Stopped: costs only its disk, and starts faster than a new one launches.
    Stopped,
    /// Terminating.
    ShuttingDown,
    /// Gone.
    Terminated,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
        })
    }
}

/// One machine of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The provider's id.
    pub id: String,
    /// Its state when listed.
    pub state: InstanceState,
    /// When it was launched, if the provider says.
    pub launched_at: Option<SystemTime>,
}

/// What an instance runs, said once as intent: a `nimbus worker` on these queues against this
/// engine. Each provider renders it: a command line for a process on this machine, cloud-init
/// user data for an EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LaunchSpec {
    /// The engine URL, as the instance reaches it (`sqlite://PATH`, `aws://?...`).
    pub engine: String,
    /// The blob store URL, where not beside the engine.
    pub blobs: Option<String>,
    /// The queues the worker receives from.
    pub queues: Vec<String>,
    /// Tasks it runs at once.
    pub concurrency: usize,
    /// The worker stops itself after this long without work (seed 001's app tier does).
    pub exit_when_idle: Option<Duration>,
    /// Further `nimbus worker` arguments, as given (`--allow-exec PATTERN`, `--model PATH`).
    pub extra_args: Vec<String>,
}

impl LaunchSpec {
    /// The `nimbus` arguments after the global ones: `worker --queue Q ... --concurrency N ...`.
    pub fn worker_args(&self) -> Vec<String> {
        let mut args = vec!["worker".to_string()];
        for q in &self.queues {
            args.extend(["--queue".to_string(), q.clone()]);
        }
        args.extend([
            "--concurrency".to_string(),
            self.concurrency.max(1).to_string(),
        ]);
        if let Some(idle) = self.exit_when_idle {
            args.extend([
                "--exit-when-idle".to_string(),
                format!("{}ms", idle.as_millis()),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The ledger partition where every worker reports its load, keyed by its worker id (the local
/// provider's instance ids are its workers' ids), so an autoscaler can tell idle workers from
/// busy ones.
pub const WORKER_LOAD_PARTITION: &str = "workers";

/// How often a worker reports its load.
pub const WORKER_LOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A worker's load as it last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerLoad {
    /// Tasks it was running.
    pub running: u32,
    /// How long it had run none (0 while it runs some), in milliseconds.
    pub idle_ms: u64,
    /// When it reported, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// Machines of one deployment (the provider knows which: a tag on EC2).
#[async_trait]
pub trait ComputeProvider: Send + Sync {
    /// The deployment's instances that are not terminated, sorted by id.
    async fn list(&self) -> Result<Vec<Instance>>;

    /// Launches `count` (1 or more) instances running `spec`, as the deployment's; returns their
    /// ids.
    async fn launch(&self, spec: &LaunchSpec, count: u32) -> Result<Vec<String>>;

    /// Starts stopped instances again, running what they were launched with.
    async fn start(&self, ids: &[String]) -> Result<()>;

    /// Stops running instances gracefully (a worker finishes or gives back its tasks); they keep
    /// their disk and start again faster than a launch.
    async fn stop(&self, ids: &[String]) -> Result<()>;

    /// Terminates instances: they are gone once their worker has stopped.
    async fn terminate(&self, ids: &[String]) -> Result<()>;
}

//! The `ComputeProvider` service: machines that run workers, listed, launched, started, stopped
//! and terminated by the autoscaler (EC2, or worker processes on this machine).

use std::fmt;
use std::time::SystemTime;

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

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The machine image (an AMI id on EC2).
    pub image: String,
    /// The machine size (an instance type on EC2).
    pub instance_type: String,
    /// The role the machine acts as (an IAM instance profile name or ARN on EC2).
    pub profile: Option<String>,
    /// The boot script (cloud-init user data) that starts the worker.
    pub user_data: String,
}

/// Machines of one deployment (the provider knows which: a tag on EC2).
#[async_trait]
pub trait ComputeProvider: Send + Sync {
    /// The deployment's instances that are not terminated, sorted by id.
    async fn list(&self) -> Result<Vec<Instance>>;

    /// Launches `count` instances of `spec`, tagged as the deployment's; returns their ids.
    async fn launch(&self, spec: &LaunchSpec, count: u32) -> Result<Vec<String>>;

    /// Starts stopped instances.
    async fn start(&self, ids: &[String]) -> Result<()>;

    /// Stops running instances (they keep their disk).
    async fn stop(&self, ids: &[String]) -> Result<()>;

    /// Terminates instances.
    async fn terminate(&self, ids: &[String]) -> Result<()>;
}

//! nimbus's elasticity: scaling policies as pure functions from a snapshot of queues and fleet
//! to actions ([`policy`]); the loop that carries them out against any engine and compute
//! provider ([`autoscaler`]); the `local` provider, whose instances are worker processes on this
//! machine ([`local`], on the one process supervisor in [`process`]); and request traces
//! ([`trace`]) with the simulator that replays them against each policy ([`simulate`]) and its
//! table and chart ([`report`]).

pub mod autoscaler;
pub mod local;
pub mod policy;
pub mod process;
pub mod report;
pub mod simulate;
pub mod trace;

pub use autoscaler::{Autoscaler, AutoscalerConfig, FleetStatus};
pub use local::LocalProvider;
pub use policy::{Action, Bounds, Decision, InstanceView, Policy, QueueLoad, Snapshot, Tuning};

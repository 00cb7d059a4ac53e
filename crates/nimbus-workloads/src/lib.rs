//! The job kinds nimbus runs on its worker runtime: `atoms` (seed 000's atom-effect calculator),
//! `tasks` (seed 002's CloudKon tasks) and their `sessions`; and `jobs`, the job store.

pub mod atoms;
pub mod classify;
pub mod jobs;
pub mod kinds;
pub mod sessions;
pub mod tasks;

//! The job kinds nimbus runs on its worker runtime. Today: `tasks` (seed 002's CloudKon tasks)
//! and their `sessions` (submit, collect, check).

pub mod sessions;
pub mod tasks;

//! The job kinds nimbus runs on its worker runtime: `atoms` (seed 000's atom-effect calculator),
//! `classify` (seeds 001 and 004's image recognition), `tasks` (seed 002's CloudKon tasks) and
//! their `sessions`, `video` (seed 002's Animoto job); `kinds`, the table of them all; `jobs`,
//! the job store; and `dead_letters`, which fails (and, on a redrive, reopens) the jobs whose
//! messages were dead-lettered.

pub mod atoms;
pub mod classify;
pub mod dead_letters;
pub mod jobs;
pub mod kinds;
pub mod sessions;
pub mod tasks;
pub mod video;

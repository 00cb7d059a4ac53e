//! One module per subcommand group.

pub mod autoscale;
#[cfg(feature = "aws")]
pub mod aws;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod lb;
pub mod ledger;
pub mod queue;
pub mod scale;
pub mod tasks;
pub mod topic;
pub mod up;
pub mod video;
pub mod worker;

use nimbus_core::queue::Attributes;

/// Collects `KEY=VALUE` pairs into attributes.
pub fn attributes(pairs: Vec<(String, String)>) -> Attributes {
    pairs.into_iter().collect()
}

//! The suite every compute provider passes (`local` processes, EC2), written once like the
//! engines' suite: `compute_suite!(make_harness())` expands to one test per case.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use nimbus_core::{ComputeProvider, ErrorKind, Instance, InstanceState, LaunchSpec};
use tokio::time::Instant;

/// A provider under test.
pub struct ComputeHarness {
    /// The provider; it starts with no instance.
    pub provider: Arc<dyn ComputeProvider>,
    /// What its instances run.
    pub spec: LaunchSpec,
    /// How long a state change may take to show (a process's exit, an EC2 transition).
    pub settle: Duration,
    /// Kept alive for the case.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Lists until `ready` holds for the listing, or `h.settle` has passed; the last listing.
async fn list_until(
    h: &ComputeHarness,
    what: &str,
    ready: impl Fn(&[Instance]) -> bool,
) -> Vec<Instance> {
    let deadline = Instant::now() + h.settle;
    loop {
        let listed = h.provider.list().await.unwrap();
        if ready(&listed) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {listed:?} after {:?}",
            h.settle
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(listed: &[Instance], id: &str) -> Option<InstanceState> {
    listed.iter().find(|i| i.id == id).map(|i| i.state)
}

fn up(state: Option<InstanceState>) -> bool {
    matches!(state, Some(InstanceState::Pending | InstanceState::Running))
}

pub async fn instances_live_through_launch_stop_start_and_terminate(h: &ComputeHarness) {
    assert!(
        h.provider.list().await.unwrap().is_empty(),
        "a fresh deployment has no instance"
    );
    let launched = h.provider.launch(&h.spec, 2).await.unwrap();
    assert_eq!(launched.len(), 2, "two launched, two ids");
    assert_ne!(launched[0], launched[1], "ids are unique");
    let listed = list_until(h, "launched instances come up", |l| {
        launched.iter().all(|id| up(state_of(l, id)))
    })
    .await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|i| i.launched_at.is_some()), "{listed:?}");
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed, sorted, "listed sorted by id");

    h.provider.stop(&launched[..1]).await.unwrap();
    list_until(h, "a stopped instance shows as stopped", |l| {
        state_of(l, &launched[0]) == Some(InstanceState::Stopped) && up(state_of(l, &launched[1]))
    })
    .await;
    h.provider.start(&launched[..1]).await.unwrap();
    list_until(h, "a started instance comes up again", |l| {
        up(state_of(l, &launched[0]))
    })
    .await;

    h.provider.terminate(&launched).await.unwrap();
    list_until(
        h,
        "terminated instances are not listed",
        <[Instance]>::is_empty,
    )
    .await;
}

pub async fn bad_requests_are_refused_and_empty_ones_do_nothing(h: &ComputeHarness) {
    let err = h.provider.launch(&h.spec, 0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "launching 0: {err}");
    for ids in [&[][..]] {
        h.provider.start(ids).await.unwrap();
        h.provider.stop(ids).await.unwrap();
        h.provider.terminate(ids).await.unwrap();
    }
    assert!(h.provider.list().await.unwrap().is_empty());
}

/// Expands to one `#[tokio::test]` per compute case; `$make` is an async expression that
/// evaluates to a fresh [`ComputeHarness`].
#[macro_export]
macro_rules! compute_suite {
    ($make:expr) => {
        $crate::compute_suite!(@cases $make;
            instances_live_through_launch_stop_start_and_terminate,
            bad_requests_are_refused_and_empty_ones_do_nothing,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make.await;
                $crate::compute::$case(&harness).await;
            }
        )+
    };
}

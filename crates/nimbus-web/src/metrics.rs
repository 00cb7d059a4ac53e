//! Prometheus metrics at `/metrics`: requests and their latency by route and status (the shared
//! tower layer of `nimbus-metrics`), jobs by state, the depth of the platform's queues and the
//! autoscaler's fleet, the last three read at scrape time.

use std::sync::Arc;

use axum::extract::MatchedPath;
use nimbus_metrics::{
    latency, EncodeLabelSet, Exposition, Family, Gauge, Latency, RequestMetricsLayer, RouteStatus,
};

use crate::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobState {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetState {
    policy: String,
    state: String,
}

/// The web tier's metrics.
pub struct Metrics {
    requests: Latency<RouteStatus>,
    jobs: Family<JobState, Gauge>,
    queues: Family<QueueState, Gauge>,
    fleet: Family<FleetState, Gauge>,
    decisions: Gauge,
    exposition: Exposition,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = latency();
        let jobs = Family::default();
        let queues = Family::default();
        let fleet = Family::default();
        let decisions = Gauge::default();
        let mut exposition = Exposition::default();
        exposition.register(
            "nimbus_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            requests.clone(),
        );
        exposition.register("nimbus_jobs", "Jobs by state.", jobs.clone());
        exposition.register(
            "nimbus_queue_messages",
            "Messages in a queue by state.",
            queues.clone(),
        );
        exposition.register(
            "nimbus_fleet_instances",
            "The autoscaler's instances by state.",
            fleet.clone(),
        );
        exposition.register(
            "nimbus_fleet_decisions",
            "Scaling decisions that did something, among the last kept.",
            decisions.clone(),
        );
        Self {
            requests,
            jobs,
            queues,
            fleet,
            decisions,
            exposition,
        }
    }
}

impl Metrics {
    /// The layer that times every request under its route pattern.
    pub fn layer(&self) -> RequestMetricsLayer {
        RequestMetricsLayer::new(
            self.requests.clone(),
            Arc::new(|parts| {
                parts
                    .extensions
                    .get::<MatchedPath>()
                    .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string())
            }),
        )
    }
}

/// The whole exposition, the engine's figures read now.
pub async fn render(state: &AppState) -> String {
    let m = &state.metrics;
    m.jobs.clear();
    match state.store.count_by_state().await {
        Ok(counts) => {
            for (s, n) in counts {
                let labels = JobState {
                    state: s.as_str().to_string(),
                };
                m.jobs.get_or_create(&labels).set(gauge_value(n));
            }
        }
        Err(e) => tracing::warn!(error = %e, "job counts unavailable"),
    }
    m.queues.clear();
    if let Ok(queues) = state.store.engine().queue.list_queues().await {
        for q in queues.iter().filter(|q| !q.as_str().starts_with("events-")) {
            if let Ok(d) = state.store.engine().queue.depth(q).await {
                for (name, n) in [
                    ("visible", d.visible),
                    ("in_flight", d.in_flight),
                    ("delayed", d.delayed),
                ] {
                    let labels = QueueState {
                        queue: q.to_string(),
                        state: name.to_string(),
                    };
                    m.queues.get_or_create(&labels).set(gauge_value(n));
                }
            }
        }
    }
    read_fleet(state).await;
    m.exposition.render()
}

/// The autoscaler's fleet as it last reported: instances by state.
async fn read_fleet(state: &AppState) {
    let m = &state.metrics;
    m.fleet.clear();
    let Ok(Some(fleet)) = nimbus_scale::FleetStatus::read(state.store.engine()).await else {
        return;
    };
    let Some(last) = fleet.samples.last() else {
        return;
    };
    for (name, n) in [
        ("pending", last.pending),
        ("running", last.running),
        ("stopping", last.stopping),
        ("stopped", last.stopped),
    ] {
        let labels = FleetState {
            policy: fleet.policy.clone(),
            state: name.to_string(),
        };
        m.fleet.get_or_create(&labels).set(i64::from(n));
    }
    m.decisions.set(gauge_value(fleet.decisions.len()));
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

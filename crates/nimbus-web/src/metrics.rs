//! Prometheus metrics at `/metrics`: requests and their latency by route and status, jobs by
//! state, and the depth of the platform's queues.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use nimbus_core::QueueName;

use crate::AppState;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Request counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), Series>>,
}

impl Metrics {
    fn record(&self, route: String, status: u16, seconds: f64) {
        let mut map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = map.entry((route, status)).or_default();
        s.count += 1;
        s.sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                s.buckets[i] += 1;
            }
        }
    }

    fn render_requests(&self, out: &mut String) {
        let map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.push_str(
            "# HELP nimbus_http_request_duration_seconds Time to answer an HTTP request.\n",
        );
        out.push_str("# TYPE nimbus_http_request_duration_seconds histogram\n");
        for ((route, status), s) in map.iter() {
            let labels = format!("route=\"{route}\",status=\"{status}\"");
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "nimbus_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "nimbus_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "nimbus_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "nimbus_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
    }
}

/// Middleware: times every request under its route pattern.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The whole exposition.
pub async fn render(state: &AppState) -> String {
    let mut out = String::new();
    state.metrics.render_requests(&mut out);
    out.push_str("# HELP nimbus_jobs Jobs by state.\n# TYPE nimbus_jobs gauge\n");
    match state.store.count_by_state().await {
        Ok(counts) => {
            for (s, n) in counts {
                let _ = writeln!(out, "nimbus_jobs{{state=\"{}\"}} {n}", s.as_str());
            }
        }
        Err(e) => tracing::warn!(error = %e, "job counts unavailable"),
    }
    out.push_str("# HELP nimbus_queue_messages Messages in a queue by state.\n# TYPE nimbus_queue_messages gauge\n");
    if let Ok(queues) = state.store.engine().queue.list_queues().await {
        for q in queues.iter().filter(|q| !q.as_str().starts_with("events-")) {
            if let Ok(d) = state.store.engine().queue.depth(q).await {
                write_depth(&mut out, q, "visible", d.visible);
                write_depth(&mut out, q, "in_flight", d.in_flight);
                write_depth(&mut out, q, "delayed", d.delayed);
            }
        }
    }
    render_fleet(state, &mut out).await;
    out
}

/// The autoscaler's fleet as it last reported: instances by state.
async fn render_fleet(state: &AppState, out: &mut String) {
    let Ok(Some(fleet)) = nimbus_scale::FleetStatus::read(state.store.engine()).await else {
        return;
    };
    let Some(last) = fleet.samples.last() else {
        return;
    };
    out.push_str("# HELP nimbus_fleet_instances The autoscaler's instances by state.\n# TYPE nimbus_fleet_instances gauge\n");
    for (name, n) in [
        ("pending", last.pending),
        ("running", last.running),
        ("stopping", last.stopping),
        ("stopped", last.stopped),
    ] {
        let _ = writeln!(
            out,
            "nimbus_fleet_instances{{policy=\"{}\",state=\"{name}\"}} {n}",
            fleet.policy
        );
    }
    out.push_str("# HELP nimbus_fleet_decisions Scaling decisions that did something, among the last kept.\n# TYPE nimbus_fleet_decisions gauge\n");
    let _ = writeln!(out, "nimbus_fleet_decisions {}", fleet.decisions.len());
}

fn write_depth(out: &mut String, q: &QueueName, state: &str, n: u64) {
    let _ = writeln!(
        out,
        "nimbus_queue_messages{{queue=\"{q}\",state=\"{state}\"}} {n}"
    );
}

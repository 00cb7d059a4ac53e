//! Active health checks: one task per target sends `GET <path>` every interval, through the
//! balancer's own keep-alive pool, and moves the target in or out of its group by the
//! thresholds; the task ends when the target is removed or the balancer stops.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};

use crate::target::Target;
use crate::Shared;

/// The largest health check body read (the rest is dropped with the connection).
const MAX_CHECK_BODY: usize = 64 * 1024;

/// Starts `target`'s checks.
pub(crate) fn start(shared: &Arc<Shared>, target: Arc<Target>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        // Spread the first checks of many targets over an interval.
        let first = Duration::from_millis(fastrand::u64(..200));
        tokio::select! {
            () = tokio::time::sleep(first) => {}
            () = target.removed.cancelled() => return,
            () = shared.shutdown.cancelled() => return,
        }
        loop {
            let routing = shared.routing();
            let Some(group) = routing.groups.get(&target.labels.group) else {
                return;
            };
            let health = group.config.health.clone();
            drop(routing);
            if !health.enabled {
                // Checks off: the target is taken as healthy (passive ejection still applies).
                target.record_check(Ok(()), 1, 1);
            } else {
                let result = check(&shared, &target, &health.path, health.timeout).await;
                if let Some(healthy) = target.record_check(
                    result.clone(),
                    health.healthy_threshold,
                    health.unhealthy_threshold,
                ) {
                    if healthy {
                        tracing::info!(group = %target.labels.group, target = %target.addr, "target healthy");
                    } else {
                        tracing::warn!(group = %target.labels.group, target = %target.addr, error = result.err().unwrap_or_default(), "target unhealthy");
                    }
                }
            }
            let pause = if health.enabled {
                health.interval
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = target.removed.cancelled() => return,
                () = shared.shutdown.cancelled() => return,
            }
        }
    });
}

/// One check: a 2xx or 3xx within `timeout`.
async fn check(
    shared: &Shared,
    target: &Target,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let request = http::Request::get(path)
        .header(http::header::HOST, &target.addr)
        .header(http::header::USER_AGENT, "nimbus-lb-health-check")
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let limits = shared.routing().limits.clone();
    let exchange = async {
        let (response, connection) = crate::proxy::exchange(target, request, &limits)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_CHECK_BODY);
        let _ = body.collect().await;
        drop(connection);
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("{path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{path} did not answer within {timeout:?}")))
}

/// A client error with its causes.
pub(crate) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

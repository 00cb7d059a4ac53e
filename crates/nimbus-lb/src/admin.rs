//! The balancer's own endpoints on its admin listener: `/metrics` (Prometheus), `/status` (an
//! HTML page of every group and target, refreshed every 2 s), `/status.json` and `/healthz`.

use std::fmt::Write;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::metrics::GroupLabel;
use crate::{Body, Route, Shared};

/// Answers an admin request.
pub(crate) fn handle<B>(shared: &Shared, request: &Request<B>) -> Response<Body> {
    match request.uri().path() {
        "/metrics" => text(metrics_text(shared), nimbus_metrics::CONTENT_TYPE),
        "/status" | "/" => text(status_page(shared), "text/html; charset=utf-8"),
        "/status.json" => text(status_json(shared).to_string(), "application/json"),
        "/healthz" => text("ok\n".into(), "text/plain; charset=utf-8"),
        _ => {
            let mut r = text(
                "not found: /metrics, /status, /status.json or /healthz\n".into(),
                "text/plain; charset=utf-8",
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

fn text(body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(bytes::Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The exposition, with the gauges read now.
pub(crate) fn metrics_text(shared: &Shared) -> String {
    let routing = shared.routing();
    let m = &shared.metrics;
    m.healthy_hosts.clear();
    m.in_flight.clear();
    for group in routing.groups.values() {
        m.healthy_hosts
            .get_or_create(&GroupLabel {
                group: group.name.clone(),
            })
            .set(i64::try_from(group.healthy_count()).unwrap_or(i64::MAX));
        for t in &group.targets {
            m.in_flight
                .get_or_create(&t.labels)
                .set(i64::from(t.outstanding()));
        }
    }
    m.render()
}

/// Every group with its rule, balance and targets.
pub(crate) fn status_json(shared: &Shared) -> serde_json::Value {
    let routing = shared.routing();
    let groups: Vec<serde_json::Value> = routing
        .groups
        .values()
        .map(|g| {
            let rules: Vec<&str> = routing
                .rules
                .iter()
                .filter(|(_, route)| {
                    matches!(route, Route::Forward { group, .. } if std::sync::Arc::ptr_eq(group, g))
                })
                .map(|(p, _)| p.as_str())
                .collect();
            let default = matches!(&routing.default, Route::Forward { group, .. } if std::sync::Arc::ptr_eq(group, g));
            serde_json::json!({
                "group": g.name,
                "rules": rules,
                "default": default,
                "balance": format!("{:?}", g.config.balance),
                "healthy": g.healthy_count(),
                "targets": g.targets.iter().map(|t| t.status()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "active_connections": shared.metrics.active_connections.get(),
        "connections": shared.metrics.connections.get(),
        "groups": groups,
    })
}

fn status_page(shared: &Shared) -> String {
    let status = status_json(shared);
    let mut html = String::from(concat!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>",
        "<title>nimbus lb</title><style>body{font-family:sans-serif;margin:2em}",
        "table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}",
        "td:first-child{text-align:left}.down{color:#b00}</style></head><body><h1>nimbus lb</h1>"
    ));
    let _ = write!(
        html,
        "<p>{} connections open, {} accepted</p>",
        status["active_connections"], status["connections"]
    );
    for g in status["groups"].as_array().into_iter().flatten() {
        let _ = write!(
            html,
            "<h2>{} <small>({}; rules {}{}; {} healthy)</small></h2><table><tr><th>target</th><th>health</th><th>in flight</th><th>requests</th><th>4xx</th><th>5xx</th><th>failed</th><th>mean ms</th></tr>",
            escape(g["group"].as_str().unwrap_or("")),
            escape(g["balance"].as_str().unwrap_or("")),
            escape(&g["rules"].to_string()),
            if g["default"] == true { ", default" } else { "" },
            g["healthy"]
        );
        for t in g["targets"].as_array().into_iter().flatten() {
            let health = match (t["healthy"].as_bool(), t["ejected"].as_bool()) {
                (Some(true), Some(false)) => "healthy".to_string(),
                (_, Some(true)) => "<span class=down>ejected</span>".to_string(),
                _ => format!(
                    "<span class=down title=\"{}\">unhealthy</span>",
                    escape(t["last_check_error"].as_str().unwrap_or(""))
                ),
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{health}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
                escape(t["target"].as_str().unwrap_or("")),
                t["in_flight"], t["requests"], t["target_4xx"], t["target_5xx"], t["failed"],
                t["mean_response_ms"].as_f64().unwrap_or(0.0)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<p><a href=/metrics>/metrics</a> · <a href=/status.json>/status.json</a></p></body></html>");
    html
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

//! One request through the balancer: its route, a target from the group, the forwarded
//! headers, the exchange over the keep-alive pool with retries for idempotent requests that
//! failed before any answer, passive ejection, the figures, the response streamed back (SSE
//! included) and WebSocket upgrades tunnelled.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use crate::metrics::{class, BalancerCode, GroupLabel, TargetCode};
use crate::target::{Group, InFlight, Target};
use crate::{Body, Route, Shared};

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The listener's port.
    pub port: u16,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// The request id header, kept from the client when it is sane, else made here.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one connection and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The rule label of `path` for the request metrics.
pub(crate) fn rule_of(shared: &Shared, path: &str) -> String {
    match shared.routing().route(path) {
        Route::Forward { rule, .. } => rule,
        Route::Fixed { .. } => "fixed".into(),
    }
}

/// Answers one request.
pub(crate) async fn handle(shared: Arc<Shared>, mut request: Request<Incoming>) -> Response<Body> {
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        return made(StatusCode::INTERNAL_SERVER_ERROR, "no peer address", None);
    };
    let request_id = request_id(request.headers());
    let route = shared.routing().route(request.uri().path());
    let mut response = match route {
        Route::Fixed { status, body } => {
            count_made(&shared, "-", status);
            made(
                StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
                &body,
                None,
            )
        }
        Route::Forward { group, .. } => {
            let upgrade = is_upgrade(request.headers());
            let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));
            prepare_headers(request.headers_mut(), peer, &request_id, upgrade);
            forward(&shared, &group, request, client_side).await
        }
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Sends `request` to a target of `group`, trying others where that is safe.
async fn forward(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    request: Request<Incoming>,
    client_side: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let limits = shared.routing().limits.clone();
    let (parts, body) = request.into_parts();
    // Only a request that can be sent again unchanged is: an idempotent method and no body
    // (a streamed body is gone once sent).
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let attempts = if retryable { 1 + limits.retries } else { 1 };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    let mut body = Some(body.boxed_unsync());
    let mut tried: Vec<Arc<Target>> = Vec::new();
    let mut last_error = None;
    for attempt in 0..attempts {
        let Some(target) = group.pick(&tried) else {
            break;
        };
        if attempt > 0 {
            shared
                .metrics
                .retries
                .get_or_create(&GroupLabel {
                    group: group.name.clone(),
                })
                .inc();
        }
        tried.push(target.clone());
        let mut out = Request::new(body.take().unwrap_or_else(empty));
        *out.method_mut() = parts.method.clone();
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = parts.headers.clone();
        match format!("http://{}{path}", target.addr).parse() {
            Ok(uri) => *out.uri_mut() = uri,
            Err(_) => return made(StatusCode::BAD_REQUEST, "the request's path cannot be forwarded", Some(&group.name)),
        }
        let in_flight = target.begin();
        let sent = Instant::now();
        let exchange = tokio::time::timeout(limits.response_timeout, shared.client.request(out));
        let result = tokio::select! {
            r = exchange => r,
            () = target.cut.cancelled() => {
                target.record_failure();
                return made_counted(shared, StatusCode::BAD_GATEWAY, "the target was deregistered", group);
            }
        };
        match result {
            Ok(Ok(response)) => {
                return answered(shared, group, &target, response, in_flight, sent, client_side);
            }
            Ok(Err(e)) => {
                target.record_failure();
                shared
                    .metrics
                    .target_failures
                    .get_or_create(&target.labels)
                    .inc();
                let refused = e.is_connect();
                if (refused || target.count_5xx(group.config.ejection.consecutive_5xx))
                    && group.eject(&target)
                {
                    shared.metrics.ejections.get_or_create(&target.labels).inc();
                }
                tracing::debug!(target = %target.addr, error = %crate::health::error_text(&e), "target failed");
                last_error = Some(format!("target {} failed: {}", target.addr, crate::health::error_text(&e)));
            }
            Err(_) => {
                target.record_failure();
                shared
                    .metrics
                    .target_failures
                    .get_or_create(&target.labels)
                    .inc();
                return made_counted(
                    shared,
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "target {} did not answer within {:?}",
                        target.addr, limits.response_timeout
                    ),
                    group,
                );
            }
        }
    }
    match last_error {
        Some(e) => made_counted(shared, StatusCode::BAD_GATEWAY, &e, group),
        None => made_counted(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("target group `{}` has no target", group.name),
            group,
        ),
    }
}

/// A target's answer, recorded and passed back.
fn answered(
    shared: &Shared,
    group: &Group,
    target: &Arc<Target>,
    mut response: Response<Incoming>,
    in_flight: InFlight,
    sent: Instant,
    client_side: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let status = response.status().as_u16();
    let elapsed = sent.elapsed();
    target.record_answer(status, elapsed);
    let m = &shared.metrics;
    m.target_response_time
        .get_or_create(&target.labels)
        .observe(elapsed.as_secs_f64());
    m.target_responses
        .get_or_create(&TargetCode {
            group: group.name.clone(),
            target: target.addr.clone(),
            code: class(status),
        })
        .inc();
    if status >= 500 && target.count_5xx(group.config.ejection.consecutive_5xx) && group.eject(target) {
        m.ejections.get_or_create(&target.labels).inc();
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            tunnel(client_side, hyper::upgrade::on(&mut response), in_flight);
            return response.map(|_| empty());
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
    let cut = target.cut.clone();
    response.map(|body| {
        Tracked {
            inner: body,
            cut: Box::pin(cut.cancelled_owned()),
            _in_flight: in_flight,
        }
        .boxed_unsync()
    })
}

/// Copies bytes both ways between an upgraded client connection and the target's.
fn tunnel(client: hyper::upgrade::OnUpgrade, target: hyper::upgrade::OnUpgrade, in_flight: InFlight) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match tokio::try_join!(client, target) {
            Ok((client, target)) => {
                let (mut c, mut t) = (TokioIo::new(client), TokioIo::new(target));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut t).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

/// A target's response body, streamed; the request counts as in flight until it ends, and it
/// ends early when the target's deregistration delay is over.
struct Tracked {
    inner: Incoming,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A response the balancer makes itself, plain text.
pub(crate) fn made(status: StatusCode, message: &str, group: Option<&str>) -> Response<Body> {
    let mut text = message.trim_end().to_string();
    if let Some(g) = group {
        text = format!("{text} (target group `{g}`)");
    }
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn made_counted(shared: &Shared, status: StatusCode, message: &str, group: &Group) -> Response<Body> {
    count_made(shared, &group.name, status.as_u16());
    made(status, message, Some(&group.name))
}

fn count_made(shared: &Shared, group: &str, status: u16) {
    shared
        .metrics
        .balancer_responses
        .get_or_create(&BalancerCode {
            group: group.to_string(),
            status,
        })
        .inc();
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The client's request id when it is 1 to 128 visible characters, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

/// The headers a target gets: hop-by-hop ones removed (an upgrade's kept), `X-Forwarded-For`
/// extended with the client, `X-Forwarded-Proto` and `-Port` of the listener, the request id.
fn prepare_headers(headers: &mut HeaderMap, peer: Peer, request_id: &HeaderValue, upgrade: bool) {
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    let client = peer.addr.ip().to_string();
    let forwarded_for = match headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if peer.tls { "https" } else { "http" }),
    );
    headers.insert("x-forwarded-port", HeaderValue::from(peer.port));
    headers.insert(REQUEST_ID, request_id.clone());
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_extend_the_chain_and_drop_hop_by_hop_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let peer = Peer {
            addr: "192.0.2.7:5000".parse().unwrap(),
            port: 8000,
            tls: true,
        };
        prepare_headers(&mut h, peer, &HeaderValue::from_static("abc"), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "8000");
        assert_eq!(h["x-request-id"], "abc");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(request_id(&h), "req-1");
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(200)).unwrap());
        assert_eq!(request_id(&h).len(), 32);
    }
}

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

use crate::config::Limits;
use crate::metrics::{BalancerCode, GroupLabel};
use crate::pool::{ConnectError, Pooled};
use crate::target::{Group, InFlight, Target};
use crate::{Body, BoxError, Route, Shared};

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

/// The rule label of a routed request for the request metrics.
pub(crate) fn rule_of(parts: &http::request::Parts) -> String {
    match parts.extensions.get::<Route>() {
        Some(Route::Forward { rule, .. }) => rule.to_string(),
        Some(Route::Fixed { .. }) => "fixed".into(),
        None => "unrouted".into(),
    }
}

/// Answers one request.
pub(crate) async fn handle(shared: Arc<Shared>, mut request: Request<Incoming>) -> Response<Body> {
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        return made(StatusCode::INTERNAL_SERVER_ERROR, "no peer address", None);
    };
    let request_id = request_id(request.headers());
    let route = match request.extensions_mut().remove::<Route>() {
        Some(route) => route,
        None => shared.routing().route(request.uri().path()).clone(),
    };
    let mut response = match route {
        Route::Fixed { status, body } => {
            count_made(&shared, "-", status);
            made(
                StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
                &body,
                None,
            )
        }
        Route::Forward { .. } if request.method() == Method::CONNECT => {
            count_made(&shared, "-", 405);
            made(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not proxied",
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
    let (mut parts, body) = request.into_parts();
    // Only a request that can be sent again unchanged is: an idempotent method and no body
    // (a streamed body is gone once sent).
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let attempts = if retryable { 1 + limits.retries } else { 1 };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut body = Some(body.map_err(BoxError::from).boxed_unsync());
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
        *out.headers_mut() = if attempt + 1 == attempts {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        // Origin form: the client's path and query; its Host header is kept (an HTTP/1.0
        // client's request without one gets the target's).
        *out.uri_mut() = http::Uri::from(path.clone());
        if !out.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&target.addr) {
                out.headers_mut().insert(header::HOST, host);
            }
        }
        let in_flight = target.begin();
        let sent = Instant::now();
        let exchange =
            tokio::time::timeout(limits.response_timeout, exchange(&target, out, &limits));
        let result = tokio::select! {
            r = exchange => r,
            () = target.cut.cancelled() => {
                failed(&target);
                return made_counted(shared, StatusCode::BAD_GATEWAY, "the target was deregistered", group);
            }
        };
        match result {
            Ok(Ok((response, connection))) => {
                return answered(
                    shared,
                    group,
                    &target,
                    response,
                    Held {
                        connection,
                        _in_flight: in_flight,
                    },
                    sent,
                    client_side,
                );
            }
            Ok(Err(e)) => {
                failed(&target);
                let refused = matches!(e, Failure::Connect(_));
                if refused || target.count_5xx(group.config.ejection.consecutive_5xx) {
                    group.eject(&target);
                }
                tracing::warn!(group = %group.name, target = %target.addr, error = %e, "target failed before answering");
                last_error = Some("the target failed before answering");
            }
            Err(_) => {
                failed(&target);
                if target.count_5xx(group.config.ejection.consecutive_5xx) {
                    group.eject(&target);
                }
                tracing::warn!(group = %group.name, target = %target.addr, "target did not answer in time");
                return made_counted(
                    shared,
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "the target did not answer within {:?}",
                        limits.response_timeout
                    ),
                    group,
                );
            }
        }
    }
    match last_error {
        Some(e) => made_counted(shared, StatusCode::BAD_GATEWAY, e, group),
        None => made_counted(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("target group `{}` has no target", group.name),
            group,
        ),
    }
}

/// Why a target gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// No connection (refused, unreachable, timed out): nothing was sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The exchange broke (reset, closed before answering).
    #[error("{}", crate::health::error_text(.0))]
    Exchange(#[from] hyper::Error),
}

/// Sends `request` to `target` over a pooled connection; a request the target never got
/// because an idle connection had closed meanwhile goes once more on a new connection, whatever
/// its method (nothing of it was sent).
/// The connection's sender, or why there is none (a pooled connection always has one).
fn sender_of(connection: &mut Pooled) -> Result<&mut crate::pool::Sender, Failure> {
    connection.sender().ok_or(Failure::Connect(ConnectError::Io(
        std::io::ErrorKind::NotConnected.into(),
    )))
}

pub(crate) async fn exchange(
    target: &Target,
    request: Request<Body>,
    limits: &Limits,
) -> Result<(Response<Incoming>, Pooled), Failure> {
    let mut connection = Pooled::get(
        &target.addr,
        limits.connect_timeout,
        limits.pool_idle_per_target,
    )
    .await?;
    match sender_of(&mut connection)?.try_send_request(request).await {
        Ok(response) => Ok((response, connection)),
        Err(mut e) => match e.take_message() {
            Some(request) if connection.reused => {
                connection.discard();
                let mut fresh = Box::pin(Pooled::fresh(
                    &target.addr,
                    limits.connect_timeout,
                    limits.pool_idle_per_target,
                ))
                .await?;
                let response = sender_of(&mut fresh)?.send_request(request).await?;
                Ok((response, fresh))
            }
            _ => {
                connection.discard();
                Err(Failure::Exchange(e.into_error()))
            }
        },
    }
}

/// What a response in progress holds: its connection (back to the pool once the body is done)
/// and its place among the target's requests in flight.
struct Held {
    connection: Pooled,
    _in_flight: InFlight,
}

/// Counts a request `target` failed before answering.
fn failed(target: &Target) {
    target.record_failure();
    target.metrics.failures.inc();
}

/// A target's answer, recorded and passed back.
fn answered(
    shared: &Shared,
    group: &Group,
    target: &Arc<Target>,
    mut response: Response<Incoming>,
    mut held: Held,
    sent: Instant,
    client_side: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let status = response.status().as_u16();
    let elapsed = sent.elapsed();
    target.record_answer(status, elapsed);
    target.metrics.response_time.observe(elapsed.as_secs_f64());
    target.metrics.answered(status);
    if status >= 500 && target.count_5xx(group.config.ejection.consecutive_5xx) {
        group.eject(target);
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_side else {
            tracing::warn!(target = %target.addr, "target switched protocols unasked");
            return made_counted(
                shared,
                StatusCode::BAD_GATEWAY,
                "the target switched protocols unasked",
                group,
            );
        };
        let target_side = hyper::upgrade::on(&mut response);
        // The connection is the tunnel's now: never back to the pool.
        held.connection.discard();
        tunnel(shared, target, client_side, target_side, held);
        return response.map(|_| empty());
    }
    strip_hop_by_hop(response.headers_mut());
    let cut = target.cut.clone();
    response.map(|body| {
        Tracked {
            inner: body,
            cut: Cut::Token(cut),
            _held: held,
        }
        .boxed_unsync()
    })
}

/// Copies bytes both ways between an upgraded client connection and the target's, until either
/// side closes, the target's deregistration delay is over, or the balancer stops.
fn tunnel(
    shared: &Shared,
    target: &Target,
    client: hyper::upgrade::OnUpgrade,
    target_side: hyper::upgrade::OnUpgrade,
    held: Held,
) {
    let (cut, shutdown) = (target.cut.clone(), shared.shutdown.clone());
    tokio::spawn(async move {
        let _held = held;
        let copy = async {
            let (client, target_side) = tokio::try_join!(client, target_side)?;
            let (mut c, mut t) = (TokioIo::new(client), TokioIo::new(target_side));
            tokio::io::copy_bidirectional(&mut c, &mut t).await?;
            Ok::<_, BoxError>(())
        };
        tokio::select! {
            r = copy => if let Err(e) = r { tracing::debug!(error = %e, "upgraded connection ended") },
            () = cut.cancelled() => tracing::debug!("upgraded connection cut: target deregistered"),
            () = shutdown.cancelled() => tracing::debug!("upgraded connection closed: shutdown"),
        }
    });
}

/// A target's response body, streamed; the request counts as in flight until it ends, and it
/// ends early when the target's deregistration delay is over.
struct Tracked {
    // Dropped first: the body, then the connection it came on goes back to the pool.
    inner: Incoming,
    cut: Cut,
    _held: Held,
}

/// A body's watch on its target's deregistration: the token alone while the body comes at once
/// (most do), a future that wakes the body once it has had to wait (a stream).
enum Cut {
    Token(tokio_util::sync::CancellationToken),
    Waiting(Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>),
}

impl Cut {
    /// Whether the target is cut; registers for a wake-up when `waiting`.
    fn poll_cut(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if let (Cut::Token(token), true) = (&*self, waiting) {
            *self = Cut::Waiting(Box::pin(token.clone().cancelled_owned()));
        }
        match self {
            Cut::Token(token) => token.is_cancelled(),
            Cut::Waiting(future) => future.as_mut().poll(cx).is_ready(),
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut.poll_cut(cx, false) {
            // An error, not an end: the client must see the body as cut short.
            return Poll::Ready(Some(
                Err("the target's deregistration delay is over".into()),
            ));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.cut.poll_cut(cx, true) => Poll::Ready(Some(Err(
                "the target's deregistration delay is over".into(),
            ))),
            other => other.map_err(BoxError::from),
        }
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
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn made_counted(
    shared: &Shared,
    status: StatusCode,
    message: &str,
    group: &Group,
) -> Response<Body> {
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
            HeaderValue::from_maybe_shared(Bytes::from(format!("{:032x}", fastrand::u128(..))))
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
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
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
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
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

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

/// Where a request came in: made once per connection, with the forwarded headers' values
/// ready (in a profile, building the forwarded headers per request, the client's address
/// formatted each time, took 7.6 % of the balancer's user time).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's IP address, as `X-Forwarded-For` names it.
    pub client: HeaderValue,
    /// The listener's port, as `X-Forwarded-Port` names it.
    pub port: HeaderValue,
    /// Whether it came over TLS.
    pub tls: bool,
}

impl Peer {
    /// The peer at `addr`, come in on listener port `port`.
    pub(crate) fn new(addr: SocketAddr, port: u16, tls: bool) -> Self {
        Self {
            client: HeaderValue::from_str(&addr.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            port: HeaderValue::from(port),
            tls,
        }
    }
}

/// The request id header, kept from the client when it is sane, else made here.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers that belong to one connection and are never forwarded (RFC 9110 7.6.1), `Upgrade`
/// included (an upgrade's is put back).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
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
    let Some(peer) = request.extensions_mut().remove::<Peer>() else {
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
            prepare_headers(request.headers_mut(), &peer, &request_id, upgrade);
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
        .unwrap_or_else(new_request_id)
}

/// 32 random hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut digits = [0u8; 32];
    for d in digits.iter_mut().rev() {
        *d = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The headers a target gets: hop-by-hop ones removed (an upgrade's kept), `X-Forwarded-For`
/// extended with the client, `X-Forwarded-Proto` and `-Port` of the listener, the request id.
fn prepare_headers(headers: &mut HeaderMap, peer: &Peer, request_id: &HeaderValue, upgrade: bool) {
    let upgrade_value = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(earlier) => {
            let mut chain = Vec::with_capacity(earlier.len() + 2 + peer.client.len());
            chain.extend_from_slice(earlier);
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(peer.client.as_bytes());
            HeaderValue::from_bytes(&chain).ok()
        }
        None => Some(peer.client.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if peer.tls { "https" } else { "http" }),
    );
    headers.insert(X_FORWARDED_PORT, peer.port.clone());
    headers.insert(REQUEST_ID, request_id.clone());
}

/// Removes the hop-by-hop headers and those the `Connection` header names. Most messages carry
/// none of them, so the headers are looked through once before anything is removed (a removal
/// by name hashes it, and there are nine).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    if present.contains(&header::CONNECTION) {
        present.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        );
    }
    for name in present {
        headers.remove(name);
    }
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
        let peer = Peer::new("192.0.2.7:5000".parse().unwrap(), 8000, true);
        prepare_headers(&mut h, &peer, &HeaderValue::from_static("abc"), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "8000");
        assert_eq!(h["x-request-id"], "abc");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_and_a_plain_message_keeps_all_of_its_own() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        let peer = Peer::new("[2001:db8::1]:5000".parse().unwrap(), 80, false);
        prepare_headers(&mut h, &peer, &HeaderValue::from_static("id"), true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(!h.contains_key(header::TE));
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut response = HeaderMap::new();
        response.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response.insert("x-custom", HeaderValue::from_static("1"));
        let kept = response.clone();
        strip_hop_by_hop(&mut response);
        assert_eq!(response, kept);
        response.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        response.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut response);
        assert_eq!(response, kept);
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(request_id(&h), "req-1");
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(200)).unwrap());
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(made, request_id(&h), "each request gets its own");
    }
}

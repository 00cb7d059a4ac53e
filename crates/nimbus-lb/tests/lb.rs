//! The balancer end to end on loopback: real hyper targets that can be slowed, failed, killed or
//! black-holed, and real clients (hyper, raw TCP, curl for HTTPS).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use nimbus_lb::{Balancer, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type TestBody = BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

/// A target: answers its name, can be made slow, unhealthy or killed; counts what it serves.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    last_headers: Arc<Mutex<Option<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct BackendState {
    name: String,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    last_headers: Arc<Mutex<Option<HeaderMap>>>,
}

impl Backend {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = BackendState {
            name: name.to_string(),
            hits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            delay_ms: Arc::default(),
            last_headers: Arc::default(),
        };
        let serving = state.clone();
        // The connections live in this task's set: aborting it kills them all, like a crash.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            hits: state.hits,
            healthy: state.healthy,
            delay_ms: state.delay_ms,
            last_headers: state.last_headers,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        self.task.abort();
    }
}

async fn answer(
    state: BackendState,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = request.uri().path().to_string();
    if path == "/healthz" {
        let ok = state.healthy.load(Ordering::SeqCst);
        let mut r = Response::new(full(if ok { "ok" } else { "down" }));
        if !ok {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(r);
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.last_headers.lock().unwrap() = Some(request.headers().clone());
    match path.as_str() {
        "/sse" => {
            let events = futures::stream::unfold(0u32, |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {i}\n\n")))),
                    i + 1,
                ))
            });
            let mut r = Response::new(StreamBody::new(events).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(r)
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            Ok(r)
        }
        _ => {
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let _ = request.into_body().collect().await;
            let mut r = Response::new(full(state.name.clone()));
            r.headers_mut()
                .insert("x-backend", state.name.parse().unwrap());
            Ok(r)
        }
    }
}

/// A target that reads a request and closes the connection without answering.
async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                if let Ok(n) = stream.read(&mut buf).await {
                    if n > 0 && !buf[..n].starts_with(b"GET /healthz") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, requests)
}

struct Lb {
    balancer: Balancer,
    addr: SocketAddr,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), nimbus_lb::LbError>>,
}

async fn start_lb(toml: &str) -> Lb {
    let config = Config::from_toml(toml).unwrap();
    let shutdown = CancellationToken::new();
    let balancer = Balancer::new(config, shutdown.clone()).unwrap();
    let (listeners, admin) = balancer.open().await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let serving = balancer.clone();
    let served = tokio::spawn(async move { serving.serve(listeners, admin).await });
    Lb {
        balancer,
        addr,
        shutdown,
        served,
    }
}

/// One group `g` of `targets` taking every path, with `lines` added to its table.
fn group_toml(targets: &[SocketAddr], lines: &str) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[default]\ngroup = \"g\"\n[group.g]\ntargets = [{}]\n{lines}\n",
        list.join(", ")
    )
}

/// A group of `targets` with fast health checks, and every path to it.
fn one_group(targets: &[SocketAddr], extra: &str) -> String {
    group_toml(
        targets,
        &format!(
            "{extra}\n[group.g.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2"
        ),
    )
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// One request on a fresh connection.
async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "lb.test")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, "").await
}

/// `clients` clients at once, each sending `each` GETs one after the other; all must be answered 200.
async fn load(addr: SocketAddr, clients: usize, each: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(async move {
            for _ in 0..each {
                assert_eq!(get(addr, "/").await.status, StatusCode::OK);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Waits (bounded only against a broken balancer) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Asserts that the balancer's exposition holds every one of `lines`.
fn assert_metrics(lb: &Lb, lines: &[&str]) {
    let metrics = lb.balancer.metrics_text();
    for line in lines {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

fn target_healthy(lb: &Lb, group: &str, addr: SocketAddr) -> bool {
    let status = lb.balancer.status();
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["group"] == group)
        .flat_map(|g| g["targets"].as_array().unwrap().iter())
        .any(|t| t["target"] == addr.to_string() && t["healthy"] == true)
}

#[tokio::test]
async fn path_rules_go_to_their_groups_first_match_wins_and_the_default_answers_the_rest() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_lb(&format!(
        r#"
        [[listener]]
        bind = "127.0.0.1:0"
        [[rule]]
        path = "/api/v?/*"
        group = "b"
        [[rule]]
        path = "/api/*"
        group = "a"
        [default]
        status = 404
        body = "nothing here"
        [group.a]
        targets = ["{}"]
        [group.b]
        targets = ["{}"]
        "#,
        a.addr, b.addr
    ))
    .await;
    assert_eq!(get(lb.addr, "/api/v1/items").await.body, "b");
    assert_eq!(
        get(lb.addr, "/api/v10/items").await.body,
        "a",
        "? is one character"
    );
    assert_eq!(
        get(lb.addr, "/api/x?v1/").await.body,
        "a",
        "the query is not matched"
    );
    let other = get(lb.addr, "/API/v1/items").await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "patterns are case-sensitive"
    );
    assert_eq!(other.body, "nothing here\n");
    assert!(other.headers.contains_key("x-request-id"));
    assert_metrics(
        &lb,
        &[
            "nimbus_lb_balancer_responses_total{group=\"-\",status=\"404\"} 1",
            "route=\"/api/v?/*\",status=\"200\"",
        ],
    );
}

#[tokio::test]
async fn round_robin_is_fair_to_one_request() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = start_lb(&one_group(&addrs, "")).await;
    load(lb.addr, 8, 25).await;
    let hits: Vec<usize> = backends.iter().map(Backend::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 200);
    let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
    assert!(max - min <= 1, "{hits:?}");
}

#[tokio::test]
async fn least_outstanding_sends_little_to_a_slow_target() {
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.delay_ms.store(300, Ordering::SeqCst);
    let lb = start_lb(&one_group(
        &[slow.addr, fast.addr],
        "balance = \"least-outstanding\"",
    ))
    .await;
    load(lb.addr, 4, 20).await;
    // Round robin would give the slow one 40 of the 80; least outstanding sends it a request
    // only when both are idle (a tie), then none while it works.
    assert!(
        slow.hits() <= 20,
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
    assert_eq!(slow.hits() + fast.hits(), 80);
}

#[tokio::test]
async fn a_failing_health_check_takes_a_target_out_within_its_thresholds_and_back_once_healthy() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_lb(&one_group(&[a.addr, b.addr], "")).await;
    a.healthy.store(false, Ordering::SeqCst);
    // Two failures in a row at 100 ms, each within 500 ms: out after about 200 ms.
    let out = eventually("a unhealthy", || !target_healthy(&lb, "g", a.addr)).await;
    assert!(out < Duration::from_secs(5), "{out:?}");
    let before = a.hits();
    for _ in 0..20 {
        assert_eq!(get(lb.addr, "/").await.body, "b");
    }
    assert_eq!(a.hits(), before);
    assert_metrics(&lb, &["nimbus_lb_healthy_hosts{group=\"g\"} 1"]);
    a.healthy.store(true, Ordering::SeqCst);
    eventually("a healthy again", || target_healthy(&lb, "g", a.addr)).await;
    for _ in 0..4 {
        get(lb.addr, "/").await;
    }
    assert_eq!(a.hits(), before + 2);
}

#[tokio::test]
async fn a_killed_target_costs_idempotent_requests_nothing_and_is_ejected() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_lb(&one_group(&[a.addr, b.addr], "")).await;
    let mut answered = Vec::new();
    for i in 0..40 {
        if i == 10 {
            a.kill();
        }
        let r = get(lb.addr, "/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        answered.push(r.body);
    }
    assert!(answered[11..].iter().all(|who| who == "b"), "{answered:?}");
    assert_metrics(
        &lb,
        &[
            "nimbus_lb_ejections_total{group=\"g\"",
            "nimbus_lb_retries_total{group=\"g\"}",
        ],
    );
}

#[tokio::test]
async fn a_request_with_a_body_or_a_non_idempotent_method_is_never_sent_twice() {
    let (hole, seen) = black_hole().await;
    let good = Backend::start("good").await;
    // No health checks (the black hole fails them) and no ejection: the routing stays put.
    let lb = start_lb(&group_toml(
        &[hole, good.addr],
        "health = { enabled = false }\nejection = { consecutive_5xx = 0 }",
    ))
    .await;
    // Round robin starts at the black hole for the first request.
    let post = send(lb.addr, "POST", "/orders", "one order").await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{}", post.body);
    assert!(
        post.body.contains("failed before answering"),
        "{}",
        post.body
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(good.hits(), 0, "the POST was not retried");
    // A GET that lands on the black hole is retried on the good target.
    for _ in 0..4 {
        let r = get(lb.addr, "/items").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert!(
        seen.load(Ordering::SeqCst) >= 2,
        "a GET went to the black hole too"
    );
}

#[tokio::test]
async fn a_removed_target_finishes_its_slow_request_and_takes_no_new_one() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.delay_ms.store(1500, Ordering::SeqCst);
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let addr = lb.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually("the slow request reached a", || a.hits() == 1).await;
    lb.balancer
        .reload(Config::from_toml(&one_group(&[b.addr], "")).unwrap())
        .unwrap();
    for _ in 0..5 {
        assert_eq!(get(lb.addr, "/").await.body, "b");
    }
    let finished = slow.await.unwrap();
    assert_eq!(finished.status, StatusCode::OK);
    assert_eq!(finished.body, "a");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_reload_adds_a_target_without_failing_a_request_and_a_bad_one_changes_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, stop) = (lb.addr, stop.clone());
        clients.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = get(addr, "/").await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                n += 1;
            }
            n
        });
    }
    // One client keeps its connection open across the reload.
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let (mut kept, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let on_kept = |kept: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        kept.send_request(
            Request::get("/")
                .header("host", "x")
                .body(Empty::new())
                .unwrap(),
        )
    };
    let first = on_kept(&mut kept).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bad = one_group(&[a.addr, b.addr], "balance = \"sideways\"");
    assert!(Config::from_toml(&bad).is_err());
    lb.balancer
        .reload(Config::from_toml(&one_group(&[a.addr, b.addr], "")).unwrap())
        .unwrap();
    eventually("b serves", || b.hits() > 20).await;
    kept.ready().await.unwrap();
    assert_eq!(
        on_kept(&mut kept).await.unwrap().status(),
        StatusCode::OK,
        "the connection opened before the reload still serves"
    );
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    while let Some(n) = clients.join_next().await {
        total += n.unwrap();
    }
    assert!(total > 40);
    assert_metrics(&lb, &["nimbus_lb_reloads_total{group=\"ok\"} 1"]);
}

#[tokio::test]
async fn shutdown_lets_an_open_request_finish_and_then_stops() {
    let a = Backend::start("a").await;
    a.delay_ms.store(800, Ordering::SeqCst);
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let addr = lb.addr;
    let slow = tokio::spawn(async move { get(addr, "/").await });
    eventually("the request reached a", || a.hits() == 1).await;
    lb.shutdown.cancel();
    let finished = slow.await.unwrap();
    assert_eq!(
        (finished.status, finished.body.as_str()),
        (StatusCode::OK, "a")
    );
    tokio::time::timeout(Duration::from_secs(30), lb.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn server_sent_events_stream_through_as_they_come() {
    let a = Backend::start("a").await;
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    let response = sender
        .send_request(
            Request::get("/sse")
                .header("host", "x")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((
                started.elapsed(),
                String::from_utf8_lossy(&data).into_owned(),
            ));
        }
    }
    let text: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    let (first, last) = (arrivals[0].0, arrivals.last().unwrap().0);
    assert!(
        last - first >= Duration::from_millis(500),
        "events came together: {arrivals:?}"
    );
}

#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let a = Backend::start("a").await;
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for word in ["hello", "through the balancer"] {
        tcp.write_all(word.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; word.len()];
        tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, word.as_bytes());
    }
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn targets_see_who_asked_over_what_and_the_request_id() {
    let a = Backend::start("a").await;
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let r = get(lb.addr, "/who").await;
    let seen = a.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], "lb.test", "the client's Host is kept");
    assert_eq!(seen["x-request-id"], r.headers["x-request-id"]);
    assert_eq!(r.headers["x-request-id"].len(), 32);
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx_from_the_balancer_which_keeps_serving() {
    let a = Backend::start("a").await;
    let lb = start_lb(&one_group(&[a.addr], "")).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "y".repeat(100 * 1024)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "p".repeat(100 * 1024)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ];
    for (raw, expected) in cases {
        let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
        let _ = tcp.write_all(&raw).await;
        let head = read_head(&mut tcp).await;
        assert!(
            head.starts_with(expected),
            "{expected} for {:?}: {head:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(40)])
        );
    }
    assert_eq!(a.hits(), 0, "nothing malformed reached the target");
    assert_eq!(get(lb.addr, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_https_listener_serves_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl; ./scripts/test.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let a = Backend::start("a").await;
    let toml = one_group(&[a.addr], "").replace(
        "bind = \"127.0.0.1:0\"",
        &format!(
            "bind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    let lb = start_lb(&toml).await;
    let url = format!("https://localhost:{}/secure", lb.addr.port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "--resolve",
            &format!("localhost:{}:127.0.0.1", lb.addr.port()),
            "--cacert",
        ])
        .arg(&cert)
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a");
    let seen = a.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    // Plain HTTP on the TLS port is refused, not served.
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    // A wrong key is refused at start, naming the file.
    std::fs::write(&key, "not a key").unwrap();
    let e = Balancer::new(Config::from_toml(&toml).unwrap(), CancellationToken::new())
        .unwrap()
        .open()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("key.pem"), "{e}");
}

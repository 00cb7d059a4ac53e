//! The balancer's listeners: connections are accepted on the caller's runtime and handed, in
//! turn, to worker threads that each run a single-threaded runtime (as nginx's worker
//! processes do: a connection and the target connections it uses stay on one thread, with no
//! wake-ups across threads, which cost a work-stealing runtime about a third of its time here).
//! Each connection is served by hyper's HTTP/1.1 server (TLS first where configured; head read
//! timeout, head size limit, keep-alive, upgrades). On shutdown, accepts stop, every connection
//! ends after its current request, and what is still open once the drain time is over is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceBuilder};

use crate::config::{ListenerConfig, TlsFiles};
use crate::proxy::{self, Peer};
use crate::{LbError, Shared};

/// An open listener, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Binds `config.bind` and loads its certificate.
    pub async fn open(config: &ListenerConfig) -> Result<Self, LbError> {
        let tls = config.tls.as_ref().map(acceptor).transpose()?;
        let tcp = bind(&config.bind.to_string()).await?;
        Ok(Self { tcp, tls })
    }

    /// The address it listens on (with the port chosen where 0 was asked).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Binds a TCP listener, naming the address when it cannot.
pub(crate) async fn bind(address: &str) -> Result<TcpListener, LbError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| LbError::Listen {
            address: address.to_string(),
            source,
        })
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, LbError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| LbError::Tls(format!("certificate {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(LbError::Tls(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| LbError::Tls(format!("private key {}: {e}", files.key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LbError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            LbError::Tls(format!(
                "{} and {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Open connections, and a wake-up when the last one ends.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    none_left: Notify,
}

impl Open {
    /// Waits until no connection is open, at most `drain`; whether none is.
    async fn drained(&self, drain: Duration) -> bool {
        let all_closed = async {
            loop {
                let notified = self.none_left.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        tokio::time::timeout(drain, all_closed).await.is_ok()
    }
}

struct OpenGuard(Arc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// A connection to serve, made into a future on the worker that takes it (its socket must be
/// registered with that worker's runtime).
type Job =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// The worker threads and the connections they serve.
pub(crate) struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Vec<std::thread::JoinHandle<()>>,
    open: Arc<Open>,
}

impl Workers {
    /// Starts `count` worker threads (at least one); once every accept loop has ended they let
    /// their connections finish for `drain`, then close what is left.
    pub(crate) fn start(count: usize, drain: Duration) -> std::io::Result<Self> {
        let open = Arc::new(Open::default());
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let open = open.clone();
            let thread = std::thread::Builder::new()
                .name(format!("nimbus-lb-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                        if !open.drained(drain).await {
                            tracing::warn!(
                                open = open.count.load(Ordering::Acquire),
                                "drain time over; closing open connections"
                            );
                        }
                    });
                    // Dropping the runtime ends the connections still open.
                    drop(runtime);
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            threads,
            open,
        })
    }

    fn dispatch(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(job).is_err() {
            tracing::warn!(worker = i, "worker thread gone; connection dropped");
        }
    }

    /// Lets the workers drain (the accept loops have ended) and waits for them.
    pub(crate) async fn finish(self) {
        drop(self.senders);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Serves the proxy on `listener` until shutdown.
pub(crate) async fn serve_proxy(shared: Arc<Shared>, listener: Listener, workers: Arc<Workers>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let layer = nimbus_metrics::RequestMetricsLayer::new(
        shared.metrics.requests.clone(),
        Arc::new(proxy::rule_of),
    );
    let service = ServiceBuilder::new().layer(layer).service_fn({
        let shared = shared.clone();
        move |request: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(proxy::handle(shared, request).await) }
        }
    });
    let routed = shared.clone();
    let make = move |peer: SocketAddr, tls: bool| {
        let (service, shared) = (service.clone(), routed.clone());
        let peer = Peer::new(peer, port, tls);
        move |mut request: Request<Incoming>| {
            // Routed once, here: the metrics layer labels by the rule, the proxy follows it.
            let route = shared.routing().route(request.uri().path()).clone();
            let extensions = request.extensions_mut();
            extensions.insert(peer.clone());
            extensions.insert(route);
            service.clone().call(request)
        }
    };
    accept_loop(&shared, listener, &workers, make).await;
}

/// Serves the admin endpoints on `listener` until shutdown.
pub(crate) async fn serve_admin(shared: Arc<Shared>, listener: TcpListener, workers: Arc<Workers>) {
    let listener = Listener {
        tcp: listener,
        tls: None,
    };
    let admin_shared = shared.clone();
    let make = move |_peer, _tls| {
        let shared = admin_shared.clone();
        move |request: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(crate::admin::handle(&shared, &request)))
        }
    };
    accept_loop(&shared, listener, &workers, make).await;
}

/// Accepts connections until shutdown and hands each to a worker, served by `make(peer, tls)`.
async fn accept_loop<M, H, F>(shared: &Arc<Shared>, listener: Listener, workers: &Workers, make: M)
where
    M: Fn(SocketAddr, bool) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<http::Response<crate::Body>, Infallible>>
        + Send
        + 'static,
{
    let limits = shared.routing().limits.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(64 * 1024))
        .keep_alive(true)
        .writev(false);
    let Listener { tcp, tls } = listener;
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted.and_then(|(s, p)| Ok((s.into_std()?, p))) {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        workers.open.count.fetch_add(1, Ordering::AcqRel);
        let guard = OpenGuard(workers.open.clone());
        shared.metrics.connections.inc();
        shared.metrics.active_connections.inc();
        let handler = make(peer, tls.is_some());
        let (builder, tls, shared) = (builder.clone(), tls.clone(), shared.clone());
        let timeout = limits.header_read_timeout;
        workers.dispatch(Box::new(move || {
            Box::pin(async move {
                let _guard = guard;
                serve_stream(stream, peer, tls, timeout, &builder, handler, &shared).await;
                shared.metrics.active_connections.dec();
            })
        }));
    }
}

/// Serves one accepted connection on the current (worker) runtime.
async fn serve_stream<H, F>(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    builder: &http1::Builder,
    handler: H,
    shared: &Shared,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<http::Response<crate::Body>, Infallible>>
        + Send
        + 'static,
{
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "cannot take the connection");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(handler);
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(builder, stream, service, shared).await,
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        }
        None => serve_connection(builder, stream, service, shared).await,
    }
}

/// Serves one connection; on shutdown, ends it after its current request.
async fn serve_connection<I, S>(builder: &http1::Builder, io: I, service: S, shared: &Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = crate::Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        () = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

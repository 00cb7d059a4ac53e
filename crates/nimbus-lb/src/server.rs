//! The balancer's listeners: accepting connections (over TLS where configured), serving each
//! with hyper's HTTP/1.1 server (head read timeout, head size limit, keep-alive, upgrades),
//! counting them, and on shutdown stopping accepts and letting open requests finish.

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
use tokio::sync::Notify;
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
        .map_err(|e| LbError::Tls(format!("{} and {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Open connections, and a wake-up when the last one ends.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    none_left: Notify,
}

struct OpenGuard(Arc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Serves the proxy on `listener` until shutdown, then drains.
pub(crate) async fn serve_proxy(shared: Arc<Shared>, listener: Listener, drain: Duration) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let layer = nimbus_metrics::RequestMetricsLayer::new(shared.metrics.requests.clone(), {
        let shared = shared.clone();
        Arc::new(move |parts| proxy::rule_of(&shared, parts.uri.path()))
    });
    let service = ServiceBuilder::new().layer(layer).service_fn({
        let shared = shared.clone();
        move |request: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(proxy::handle(shared, request).await) }
        }
    });
    accept_loop(&shared, listener, drain, move |peer: SocketAddr, tls: bool| {
        let service = service.clone();
        move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer {
                addr: peer,
                port,
                tls,
            });
            let mut service = service.clone();
            async move { service.call(request).await }
        }
    })
    .await;
}

/// Serves the admin endpoints on `listener` until shutdown.
pub(crate) async fn serve_admin(shared: Arc<Shared>, listener: TcpListener, drain: Duration) {
    let listener = Listener {
        tcp: listener,
        tls: None,
    };
    let admin_shared = shared.clone();
    accept_loop(&shared, listener, drain, move |_peer, _tls| {
        let shared = admin_shared.clone();
        move |request: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(crate::admin::handle(&shared, &request)) }
        }
    })
    .await;
}

/// Accepts connections and serves each with the service `make(peer, tls)` makes.
async fn accept_loop<M, S, F>(shared: &Arc<Shared>, listener: Listener, drain: Duration, make: M)
where
    M: Fn(SocketAddr, bool) -> S,
    S: Fn(Request<Incoming>) -> F + Send + 'static,
    F: std::future::Future<Output = Result<http::Response<crate::Body>, Infallible>> + Send + 'static,
{
    let open = Arc::new(Open::default());
    let limits = shared.routing().limits.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(64 * 1024))
        .keep_alive(true);
    let Listener { tcp, tls } = listener;
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        open.count.fetch_add(1, Ordering::AcqRel);
        let guard = OpenGuard(open.clone());
        shared.metrics.connections.inc();
        shared.metrics.active_connections.inc();
        let service = hyper::service::service_fn(make(peer, tls.is_some()));
        let (builder, tls, shared) = (builder.clone(), tls.clone(), shared.clone());
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(&builder, stream, service, &shared).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                },
                None => serve_connection(&builder, stream, service, &shared).await,
            }
            shared.metrics.active_connections.dec();
        });
    }
    drop(tcp);
    let wait_all = async {
        loop {
            let notified = open.none_left.notified();
            if open.count.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(drain, wait_all).await.is_err() {
        tracing::warn!(open = open.count.load(Ordering::Acquire), "drain time over; closing open connections");
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
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
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

//! Keep-alive connections to targets: one pool per thread (each worker thread runs its own
//! runtime, so a pool needs no lock and a connection's task stays on the thread that uses it),
//! hyper's HTTP/1.1 client connections, taken idle or made, given back when their response
//! body is done.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::Body;

pub(crate) type Sender = SendRequest<Body>;

thread_local! {
    static IDLE: RefCell<HashMap<String, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The target refused or could not be reached.
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    /// It took longer than the connect timeout.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The HTTP handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

/// A connection to a target, given back to this thread's pool when dropped (unless it closed or
/// was taken for an upgrade).
pub(crate) struct Pooled {
    sender: Option<Sender>,
    addr: String,
    max_idle: usize,
    /// Whether it was taken idle from the pool (a request it fails may not have reached the
    /// target: the target may have closed it while idle).
    pub reused: bool,
}

impl Pooled {
    /// Takes an idle connection to `addr` that is ready, or makes one.
    pub(crate) async fn get(
        addr: &str,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, ConnectError> {
        loop {
            let idle = IDLE.with(|p| p.borrow_mut().get_mut(addr).and_then(Vec::pop));
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(Self {
                    sender: Some(sender),
                    addr: addr.to_string(),
                    max_idle,
                    reused: true,
                });
            }
        }
        // Boxed: a connect is rare, and its future would make every request's larger.
        Box::pin(Self::fresh(addr, connect_timeout, max_idle)).await
    }

    /// A new connection to `addr`.
    pub(crate) async fn fresh(
        addr: &str,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, ConnectError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::Builder::new()
                .writev(false)
                .handshake(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "target connection ended");
                }
            });
            Ok::<_, ConnectError>(sender)
        };
        let sender = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(connect_timeout))??;
        Ok(Self {
            sender: Some(sender),
            addr: addr.to_string(),
            max_idle,
            reused: false,
        })
    }

    /// The connection's sender.
    pub(crate) fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// Keeps it out of the pool (an upgraded or broken connection).
    pub(crate) fn discard(&mut self) {
        self.sender = None;
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let addr = std::mem::take(&mut self.addr);
        let max = self.max_idle;
        // A thread being torn down has no pool left: the connection just closes.
        let _ = IDLE.try_with(|p| {
            let mut pool = p.borrow_mut();
            let idle = pool.entry(addr).or_default();
            if idle.len() < max {
                idle.push(sender);
            }
        });
    }
}

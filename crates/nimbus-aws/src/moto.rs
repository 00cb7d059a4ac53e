//! A local AWS API server (moto, from PyPI `moto[server]`) for tests and demos: started on
//! 127.0.0.1 at a free port, stopped when dropped or when the process that started it exits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_core::{Error, Result};

/// How long moto may take to start (it imports a lot of Python).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    watchdog: Child,
    port: u16,
}

impl MotoServer {
    /// Starts `moto_server` on a free port of 127.0.0.1 and waits until it answers.
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        // The shell watches its parent: if the test process dies (even by kill -9), moto goes too.
        let script = r#"moto_server -H 127.0.0.1 -p "$0" >/dev/null 2>&1 & m=$!
trap 'kill $m 2>/dev/null; exit 0' TERM INT
while kill -0 $PPID 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done
kill $m 2>/dev/null"#;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Error::internal("cannot start sh for moto_server").with_source(e))?;
        let mut server = Self { watchdog, port };
        server.wait_until_ready()?;
        Ok(server)
    }

    /// The endpoint URL to point the engine at.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An engine configuration for this server: region us-east-1, moto's test credentials.
    pub fn config(&self, prefix: &str) -> crate::AwsConfig {
        crate::AwsConfig {
            region: Some("us-east-1".to_string()),
            endpoint: Some(self.endpoint()),
            prefix: prefix.to_string(),
            credentials: Some(("testing".to_string(), "testing".to_string())),
        }
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                return Err(Error::internal(format!(
                    "moto_server exited at once ({status}); install it with `pip install 'moto[server]'`"
                )));
            }
            if answers(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::internal(format!(
            "moto_server did not answer on port {} within {START_TIMEOUT:?}",
            self.port
        )))
    }
}

/// Whether an HTTP server answers on the port.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::internal("cannot find a free port").with_source(e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::internal("cannot find a free port").with_source(e))
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.watchdog.id().to_string())
            .status();
        let _ = self.watchdog.wait();
    }
}

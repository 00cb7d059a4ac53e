//! nimbus's embedded engine: queues, topics and the ledger in one SQLite file (WAL) that every
//! process on the machine shares, and blobs in a directory beside it.
//!
//! All calls of one process go through one connection (SQLite has one writer at a time; more
//! connections would only add busy waits). Long polls are woken at once by sends in the same
//! process and poll at a bounded interval for sends by other processes. With the default
//! `synchronous=NORMAL` a committed write survives the crash of every process (not a power cut;
//! `SqliteOptions::durable_against_power_loss` gives that at a cost).

mod ledger;
mod queue;
mod topic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nimbus_core::clock::now_ms;
use nimbus_core::{Engine, Error, ErrorKind, Result};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;

const SCHEMA: &str = include_str!("schema.sql");

/// How the embedded engine opens its database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How often a long poll looks for messages sent by other processes.
    pub poll_interval: Duration,
    /// `synchronous=FULL`: commits survive a power cut too (slower).
    pub durable_against_power_loss: bool,
    /// How long a call waits for another process's write lock before failing as unavailable.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(20),
            durable_against_power_loss: false,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// The embedded engine over one SQLite database file.
#[derive(Clone)]
pub struct SqliteEngine {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    options: SqliteOptions,
    stop_checkpointer: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_checkpointer.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SqliteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEngine")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteEngine {
    /// Opens (creating if needed) the database at `path` and its schema.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot create directory {}", dir.display()),
                )
                .with_source(e)
                .with_retryable(false)
            })?;
        }
        let conn = connect(&path, &options)?;
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        let stop_checkpointer = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(path.clone(), options.clone(), stop_checkpointer.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                waiters: Mutex::default(),
                options,
                stop_checkpointer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The whole engine: this database for queues, topics and the ledger, and `blobs_dir` for
    /// blobs (created if needed).
    pub fn into_engine(self, blobs_dir: impl AsRef<Path>) -> Result<Engine> {
        let dir = blobs_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot create blob directory {}", dir.display()),
            )
            .with_source(e)
            .with_retryable(false)
        })?;
        let blobs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            Error::new(ErrorKind::Unavailable, "cannot open blob directory").with_source(e)
        })?;
        let shared = Arc::new(self);
        Ok(Engine::new(
            shared.clone(),
            shared.clone(),
            shared,
            Arc::new(blobs),
        ))
    }

    /// Runs `work` on the connection on a blocking thread.
    async fn call<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&mut lock(&inner.conn)))
            .await
            .map_err(|e| Error::internal("engine task failed").with_source(e))?
    }

    /// The notifier that wakes this process's long polls on `queue`.
    fn waiter(&self, queue: &str) -> Arc<Notify> {
        lock(&self.inner.waiters)
            .entry(queue.to_string())
            .or_default()
            .clone()
    }

    /// Wakes this process's long polls on each of `queues`.
    fn wake(&self, queues: &[String]) {
        let waiters = lock(&self.inner.waiters);
        for q in queues {
            if let Some(n) = waiters.get(q) {
                n.notify_waiters();
            }
        }
    }
}

/// Locks a mutex, recovering from a panic of a previous holder (the data is SQLite's).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot open database {}", path.display()),
        )
        .with_source(e)
        .with_retryable(false)
    })?;
    BUSY_TIMEOUT_MS.store(
        u64::try_from(options.busy_timeout.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    conn.busy_handler(Some(wait_for_the_write_lock))
        .map_err(sql_error)?;
    let sync = if options.durable_against_power_loss {
        "FULL"
    } else {
        "NORMAL"
    };
    // A large WAL keeps checkpoint fsyncs out of commits; the checkpointer thread does them.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint=10000;"
    ))
    .map_err(sql_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// How long a call waits for another process's write lock: the busy timeout of the last engine
/// opened in this process (one per process in practice; a busy handler is a plain function).
static BUSY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);

/// Tries at the short pause before the long one.
const SHORT_TRIES: i32 = 100;
const SHORT_PAUSE: Duration = Duration::from_micros(50);
const LONG_PAUSE: Duration = Duration::from_millis(1);

/// Waits for another process's write lock in short steps. SQLite's own busy handler sleeps 1, 2,
/// 5, 10, 15, 20, 25 ms... between tries, so under several worker processes on one file a write
/// waited milliseconds for a lock held for tens of microseconds: every task's end waited that
/// long to be durable, and a worker killed meanwhile had that many finished tasks run again.
/// Here the first 100 tries are 50 µs apart (5 ms), then 1 ms apart until the busy timeout.
fn wait_for_the_write_lock(tries: i32) -> bool {
    let short = tries.min(SHORT_TRIES);
    let long = (tries - SHORT_TRIES).max(0);
    let waited = SHORT_PAUSE * short.unsigned_abs() + LONG_PAUSE * long.unsigned_abs();
    let limit = Duration::from_millis(BUSY_TIMEOUT_MS.load(Ordering::Relaxed));
    if waited >= limit {
        return false;
    }
    std::thread::sleep(if tries < SHORT_TRIES {
        SHORT_PAUSE
    } else {
        LONG_PAUSE
    });
    true
}

/// How often the housekeeper deletes messages past their queue's retention.
const RETENTION_SWEEP: Duration = Duration::from_secs(30);

/// Housekeeping on a second connection: checkpoints the WAL so writers rarely have to, and
/// deletes messages past their queue's retention (receives skip them anyway; this keeps a queue
/// nobody reads, such as a dead web replica's event queue, from growing).
fn spawn_checkpointer(path: PathBuf, options: SqliteOptions, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("nimbus-housekeeping".into())
        .spawn(move || {
            let Ok(conn) = connect(&path, &options) else {
                return;
            };
            let mut last_sweep = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "wal checkpoint failed");
                }
                if last_sweep.elapsed() >= RETENTION_SWEEP {
                    last_sweep = std::time::Instant::now();
                    if let Err(e) = sweep_expired(&conn) {
                        tracing::debug!(error = %e, "retention sweep failed");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no housekeeping thread; writers will checkpoint");
    }
}

/// Deletes every message older than its queue's retention; returns how many.
pub(crate) fn sweep_expired(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m JOIN queues q ON q.id = m.queue_id
                                           WHERE m.sent_at + q.retention_ms <= ?1)",
        [now_ms()],
    )
}

/// Maps a SQLite error to the engine-neutral kinds: lock contention is retryable.
fn sql_error(e: rusqlite::Error) -> Error {
    let kind = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            ErrorKind::Unavailable
        }
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::CannotOpen) => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("sqlite: {e}")).with_source(e)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

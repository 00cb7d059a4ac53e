//! The embedded engine against the shared conformance suite, each case on a fresh database.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nimbus_conformance::{conformance_suite, Harness};
use nimbus_sqlite::{SqliteEngine, SqliteOptions};

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = SqliteEngine::open(dir.path().join("nimbus.db"), SqliteOptions::default())
        .and_then(|e| e.into_engine(dir.path().join("blobs")))
        .expect("open engine");
    // 400 ms: long enough that a loaded 2-core CI machine does not stall through a lease.
    Harness::new(engine, Duration::from_millis(400)).guard(dir)
}

conformance_suite!(harness());

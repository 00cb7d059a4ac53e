//! Several OS processes on one database file: concurrent senders, consumers and counters, a
//! long poll woken by another process, and sends that survive kill -9 of every process.
//!
//! The test binary re-runs itself as the child process: `child_process` does nothing unless
//! `NIMBUS_CHILD` names a role.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_core::{
    ItemKey, Ledger, OutgoingMessage, Queue, QueueName, QueueOptions, ReceiveRequest,
};
use nimbus_sqlite::{SqliteEngine, SqliteOptions};

const SENDERS: usize = 2;
const PER_SENDER: usize = 500;

fn open(db: &Path) -> SqliteEngine {
    SqliteEngine::open(db, SqliteOptions::default()).unwrap()
}

/// A new database in a temporary directory, with the shared queue created.
async fn fresh() -> (tempfile::TempDir, SqliteEngine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir.path().join("nimbus.db"));
    engine
        .create_queue(&queue(), &QueueOptions::default())
        .await
        .unwrap();
    (dir, engine)
}

fn queue() -> QueueName {
    QueueName::new("shared").unwrap()
}

fn spawn_child(role: &str, db: &Path, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("NIMBUS_CHILD", role)
        .env("NIMBUS_DB", db)
        .stdout(stdout)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn child_process() {
    let (Ok(role), Ok(db)) = (std::env::var("NIMBUS_CHILD"), std::env::var("NIMBUS_DB")) else {
        return;
    };
    let engine = open(Path::new(&db));
    match role.as_str() {
        "sender" => {
            let id = std::process::id();
            for batch in 0..PER_SENDER / 50 {
                let msgs = (0..50)
                    .map(|i| OutgoingMessage::new(format!("{id}-{}", batch * 50 + i)))
                    .collect();
                engine.send_batch(&queue(), msgs).await.unwrap();
                engine
                    .add(&ItemKey::new("counters", "sent-batches").unwrap(), 1)
                    .await
                    .unwrap();
            }
        }
        "poller" => {
            println!("polling");
            let got = engine
                .receive(
                    &queue(),
                    ReceiveRequest::new(1).wait(Duration::from_secs(20)),
                )
                .await
                .unwrap();
            println!("got {}", got.len());
            assert_eq!(
                got.len(),
                1,
                "the long poll in the child got the parent's message"
            );
            Queue::delete(&engine, &queue(), &got[0].receipt)
                .await
                .unwrap();
        }
        "crash" => {
            // Report every acknowledged send; the parent kills us at some point.
            let mut out = std::io::stdout().lock();
            for i in 0.. {
                engine
                    .send(&queue(), OutgoingMessage::new(i.to_string()))
                    .await
                    .unwrap();
                writeln!(out, "sent {i}").unwrap();
                out.flush().unwrap();
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_send_while_one_consumes_and_counts_add_up() {
    let (dir, engine) = fresh().await;
    let db = dir.path().join("nimbus.db");
    let mut children: Vec<Child> = (0..SENDERS)
        .map(|_| spawn_child("sender", &db, Stdio::null()))
        .collect();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < SENDERS * PER_SENDER && Instant::now() < deadline {
        let got = engine
            .receive(
                &queue(),
                ReceiveRequest::new(100).wait(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        for d in &got {
            assert!(seen.insert(d.body.clone()), "a message was delivered twice");
        }
        if !got.is_empty() {
            let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
            engine.delete_batch(&queue(), &receipts).await.unwrap();
        }
    }
    for c in &mut children {
        assert!(c.wait().unwrap().success(), "a sender process failed");
    }
    assert_eq!(
        seen.len(),
        SENDERS * PER_SENDER,
        "every message from both processes arrived"
    );
    let batches = engine
        .get(&ItemKey::new("counters", "sent-batches").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batches.counter,
        (SENDERS * PER_SENDER / 50) as i64,
        "counter adds from two processes"
    );
}

/// The next of the poller child's own lines (its test harness prints lines of its own).
fn marker(lines: &mut std::io::Lines<BufReader<std::process::ChildStdout>>) -> String {
    loop {
        let line = lines.next().expect("child output").unwrap();
        if let Some(at) = line.find("polling").or_else(|| line.find("got ")) {
            return line[at..].to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_another_process_wakes_on_send() {
    let (dir, engine) = fresh().await;
    let db = dir.path().join("nimbus.db");
    let mut child = spawn_child("poller", &db, Stdio::piped());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(marker(&mut lines), "polling");
    // The child is in its receive (or about to be: then it finds the message at once).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    engine
        .send(&queue(), OutgoingMessage::new("wake up"))
        .await
        .unwrap();
    let (got, took) = tokio::task::spawn_blocking(move || {
        let got = marker(&mut lines);
        let took = sent.elapsed();
        // Read to the end: a closed pipe would fail the child's last lines.
        lines.for_each(drop);
        (got, took)
    })
    .await
    .unwrap();
    assert_eq!(got, "got 1", "the child's long poll got the message");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the polling child failed");
    // Woken by the send, not by the end of its 20 s wait.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(engine.depth(&queue()).await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nimbus.db");
    open(&db)
        .create_queue(&queue(), &QueueOptions::default())
        .await
        .unwrap();
    // No process of ours holds the database while the child writes and dies.
    let mut child = spawn_child("crash", &db, Stdio::piped());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = 0u64;
    while acknowledged < 300 {
        let line = lines.next().expect("child output").unwrap();
        if let Some(n) = line.strip_prefix("sent ") {
            acknowledged = n.parse::<u64>().unwrap() + 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let engine = open(&db);
    let mut got = HashSet::new();
    loop {
        let batch = engine
            .receive(&queue(), ReceiveRequest::new(1000))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(
            batch
                .iter()
                .map(|d| String::from_utf8_lossy(&d.body).parse::<u64>().unwrap()),
        );
    }
    let missing: Vec<_> = (0..acknowledged).filter(|i| !got.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged sends lost by kill -9: {missing:?}"
    );
}

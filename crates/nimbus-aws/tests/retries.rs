//! Throttling is retried with backoff, and a call that stays throttled ends as `Throttled`:
//! against a tiny HTTP server that answers SQS's throttling error a given number of times.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nimbus_aws::{AwsConfig, AwsEngine, S3Location};
use nimbus_core::ErrorKind;

/// Serves SQS JSON-protocol answers: the throttling error for the first `throttled` requests,
/// then an empty queue list. Returns the endpoint and the request counter.
fn server(throttled: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut length = 0;
                let mut line = String::new();
                // Request line and headers; a closed connection ends this client.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                if line.is_empty() {
                    break;
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, extra, answer) = if n < throttled {
                    (
                        "400 Bad Request",
                        "x-amzn-query-error: Throttling;Sender\r\n",
                        r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#,
                    )
                } else {
                    ("200 OK", "", r#"{"QueueUrls":[]}"#)
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\n{extra}content-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if stream.write_all(response.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (endpoint, count)
}

async fn engine(endpoint: String) -> nimbus_core::Engine {
    let config = AwsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        prefix: "retry-".into(),
        credentials: Some(("testing".into(), "testing".into())),
    };
    let aws = AwsEngine::connect(config).await.unwrap();
    aws.engine(&S3Location::parse("s3://unused").unwrap())
        .unwrap()
}

#[tokio::test]
async fn throttled_calls_are_retried_until_they_succeed() {
    let (endpoint, count) = server(2);
    let queues = engine(endpoint).await.queue.list_queues().await.unwrap();
    assert!(queues.is_empty());
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "two throttled answers, then success"
    );
}

#[tokio::test]
async fn a_call_throttled_every_time_ends_as_throttled_and_retryable() {
    let (endpoint, count) = server(usize::MAX);
    let err = engine(endpoint)
        .await
        .queue
        .list_queues()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
    assert!(err.is_retryable());
    assert!(
        count.load(Ordering::SeqCst) > 1,
        "the SDK tried more than once"
    );
}

/// A proxy in front of `upstream` that forwards requests and answers, except that it drops the
/// answer of the first `drops` requests whose `x-amz-target` names one of `operations` (the call
/// landed, its answer is lost: the ambiguous failure a client retries). Returns its endpoint and how many
/// answers it dropped.
fn dropping_proxy(
    upstream: String,
    operations: &'static [&'static str],
    drops: usize,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let dropped = Arc::new(AtomicUsize::new(0));
    let seen = dropped.clone();
    let upstream = upstream.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (upstream, seen) = (upstream.clone(), seen.clone());
            std::thread::spawn(move || {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut to_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut from_client, mut from_server) =
                    (BufReader::new(client), BufReader::new(server));
                while let Some((head, body)) = read_message(&mut from_client) {
                    let lower = head.to_ascii_lowercase();
                    let target = operations.iter().any(|op| {
                        lower.contains(&format!(
                            "x-amz-target: dynamodb_20120810.{}\r\n",
                            op.to_ascii_lowercase()
                        ))
                    });
                    if to_server
                        .write_all(head.as_bytes())
                        .and_then(|()| to_server.write_all(&body))
                        .is_err()
                    {
                        return;
                    }
                    let Some((answer_head, answer)) = read_message(&mut from_server) else {
                        return;
                    };
                    if target && seen.fetch_add(1, Ordering::SeqCst) < drops {
                        let _ = to_client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if to_client
                        .write_all(answer_head.as_bytes())
                        .and_then(|()| to_client.write_all(&answer))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, dropped)
}

/// One HTTP/1.1 message (its head as text, its body by content-length) from `reader`.
fn read_message(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let (mut head, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Regression (issue 16): a counter add retried after its answer was lost (the write landed)
/// was applied twice on DynamoDB; each add now carries a token written in the same transaction.
#[tokio::test]
async fn a_counter_add_whose_answer_is_lost_is_applied_once() {
    use nimbus_core::ItemKey;
    let moto = nimbus_aws::moto::MotoServer::start()
        .expect("moto_server starts (pip install 'moto[server]')");
    let direct = AwsEngine::connect(moto.config("idem-")).await.unwrap();
    nimbus_aws::provision::create_table(direct.clients())
        .await
        .unwrap();
    let (proxy, dropped) =
        dropping_proxy(moto.endpoint(), &["UpdateItem", "TransactWriteItems"], 1);
    let through = AwsEngine::connect(AwsConfig {
        endpoint: Some(proxy),
        ..moto.config("idem-")
    })
    .await
    .unwrap();
    let blobs = S3Location::parse("s3://unused").unwrap();
    let ledger = through.engine(&blobs).unwrap().ledger;
    let key = ItemKey::new("counters", "ambiguous").unwrap();
    let after = ledger.add(&key, 5).await.unwrap();
    assert_eq!(after, 5, "the retried add was applied once");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "the first answer was dropped, the retry answered"
    );
    assert_eq!(ledger.add(&key, 2).await.unwrap(), 7);
    let stored = direct
        .engine(&blobs)
        .unwrap()
        .ledger
        .get(&key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.counter, 7);
}

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

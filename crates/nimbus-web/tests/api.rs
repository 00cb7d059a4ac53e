//! The web tier through `Router::oneshot`: bad input gets a 4xx naming the problem, and an atoms
//! job runs end to end (web, generator, solvers, events) with its SSE stream read to the end.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use bytes::Buf;
use http_body_util::BodyExt;
use nimbus_core::Engine;
use nimbus_web::WebConfig;
use nimbus_worker::Handlers;
use nimbus_workloads::atoms::{self, kernel};
use nimbus_workloads::jobs::JobStore;
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;

use common::{Platform, WorkerSpec};

/// The atoms generator's and solvers' handlers.
fn atoms_handlers(engine: &Engine) -> Handlers {
    let store = JobStore::new(engine.clone());
    Handlers::default()
        .with(atoms::GENERATE, atoms::GenerateHandler::new(store.clone()))
        .with(atoms::SOLVE, atoms::SolveHandler::new(store))
}

/// A worker of the atoms generator and solvers.
const ATOMS_WORKER: WorkerSpec<'static> = WorkerSpec {
    handlers: &atoms_handlers,
    queues: &[atoms::GENERATE, atoms::SOLVE],
    concurrency: 4,
};

/// The web tier, with the atoms generator and solvers when `with_workers`.
async fn platform(config: WebConfig, with_workers: bool) -> Platform {
    common::platform(config, with_workers.then_some(ATOMS_WORKER)).await
}

/// `POST /api/v1/queues/QUEUE/redrive`.
async fn redrive(app: &Router, queue: &str) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/api/v1/queues/{queue}/redrive"),
        None,
        Body::empty(),
    )
    .await
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let response = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// `POST /api/v1/jobs/ID/cancel`.
async fn cancel(app: &Router, id: &str) -> (StatusCode, Value) {
    let uri = format!("/api/v1/jobs/{id}/cancel");
    call(app, "POST", &uri, None, Body::empty()).await
}

async fn post_json(app: &Router, uri: &str, body: &str) -> (StatusCode, Value) {
    call(app, "POST", uri, Some("application/json"), body.to_string()).await
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"))
}

#[tokio::test]
async fn bad_requests_get_4xx_that_name_the_problem() {
    let p = platform(
        WebConfig {
            upload_limit: 1024,
            ..WebConfig::default()
        },
        false,
    )
    .await;
    let cases = [
        ("{not json", "as JSON"),
        (r#"{"kind":"atoms"}"#, "missing field `params`"),
        (
            r#"{"kind":"atoms","params":{}}"#,
            "missing field `grid_size`",
        ),
        (r#"{"kind":"nope","params":{}}"#, "unknown job kind `nope`"),
        (
            r#"{"kind":"atoms","params":{"grid_size":0,"atom_count":5}}"#,
            "1 to 512",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":600,"atom_count":5}}"#,
            "1 to 512",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":4,"atom_count":0}}"#,
            "atom_count 0",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":512,"atom_count":1000000}}"#,
            "over the limit",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":"big","atom_count":5}}"#,
            "invalid type",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":4,"atom_count":5,"colour":1}}"#,
            "unknown field `colour`",
        ),
        (r#"{"kind":"atoms","params":{"grid_size":4}}"#, "atom_count"),
        (
            r#"{"kind":"atoms","params":{"grid_size":4,"atoms_key":"uploads/none.bin"}}"#,
            "does not exist",
        ),
        (
            r#"{"kind":"atoms","params":{"grid_size":4,"atoms_key":"../etc/passwd"}}"#,
            "not an upload key",
        ),
    ];
    for (body, says) in cases {
        let (status, v) = post_json(&p.app, "/api/v1/jobs", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(error_of(&v).contains(says), "{body}: {v}");
    }
    let (status, v) = call(&p.app, "POST", "/api/v1/jobs", Some("text/plain"), "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("application/json"));
    let (status, v) = call(&p.app, "GET", "/api/v1/jobs/0000", None, Body::empty()).await;
    assert_eq!(
        (status, error_of(&v).contains("does not exist")),
        (StatusCode::NOT_FOUND, true)
    );
    let (status, _) = call(&p.app, "GET", "/no/such/page", None, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = call(&p.app, "GET", "/api/v1/jobs?limit=0", None, Body::empty()).await;
    assert_eq!(
        (status, error_of(&v).contains("limit 0")),
        (StatusCode::BAD_REQUEST, true)
    );
    let (status, v) = call(&p.app, "POST", "/api/v1/atoms", None, "1 2 3\n").await;
    assert_eq!(
        (status, error_of(&v).contains("line 1")),
        (StatusCode::BAD_REQUEST, true),
        "{v}"
    );
    let (status, v) = call(
        &p.app,
        "POST",
        "/api/v1/atoms",
        None,
        "1 1 1 1\n".repeat(200),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(error_of(&v).contains("1024 bytes"));
    let (status, v) = call(&p.app, "POST", "/api/v1/atoms", None, "5 5 5 1\n").await;
    assert_eq!(status, StatusCode::CREATED);
    let body = json!({"kind": "atoms", "params": {"grid_size": 4, "atoms_key": v["atoms_key"]}})
        .to_string();
    let (status, v) = post_json(&p.app, "/api/v1/jobs", &body).await;
    assert_eq!(
        (status, error_of(&v).contains("outside the grid")),
        (StatusCode::BAD_REQUEST, true),
        "{v}"
    );
}

#[tokio::test]
async fn health_openapi_and_metrics_are_served() {
    let p = platform(WebConfig::default(), false).await;
    let (status, v) = call(&p.app, "GET", "/healthz", None, Body::empty()).await;
    assert_eq!((status, v), (StatusCode::OK, Value::String("ok".into())));
    let (_, doc) = call(&p.app, "GET", "/api/v1/openapi.json", None, Body::empty()).await;
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/events",
        "/api/v1/jobs/{id}/plane.png",
        "/api/v1/jobs/{id}/video",
        "/api/v1/atoms",
        "/api/v1/classify",
        "/api/v1/upload",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    post_json(
        &p.app,
        "/api/v1/jobs",
        r#"{"kind":"atoms","params":{"grid_size":4,"atom_count":3}}"#,
    )
    .await;
    let (status, text) = call(&p.app, "GET", "/metrics", None, Body::empty()).await;
    let text = text.as_str().unwrap().to_string();
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("nimbus_jobs{state=\"queued\"} 1"), "{text}");
    assert!(
        text.contains("nimbus_queue_messages{queue=\"atoms-generate\",state=\"visible\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "nimbus_http_request_duration_seconds_count{route=\"/api/v1/jobs\",status=\"201\"} 1"
        ),
        "{text}"
    );
    let (status, page) = call(&p.app, "GET", "/", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("Atom-effect calculator"));
}

/// Reads a job's SSE stream to its end: (event name, data) pairs.
async fn read_stream(app: &Router, id: &str) -> Vec<(String, Value)> {
    let req = Request::get(format!("/api/v1/jobs/{id}/events"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    parse_sse(response.into_body()).await
}

/// Server-sent events from a body, until it ends.
async fn parse_sse<B>(mut body: B) -> Vec<(String, Value)>
where
    B: http_body::Body + Unpin,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Debug,
{
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("stream ended in time");
        let Some(frame) = frame else { break };
        if let Ok(mut data) = frame.unwrap().into_data() {
            let bytes = data.copy_to_bytes(data.remaining());
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

async fn create(app: &Router, grid: u32, atoms: u32, seed: u64) -> String {
    let body =
        json!({"kind": "atoms", "params": {"grid_size": grid, "atom_count": atoms, "seed": seed}})
            .to_string();
    let (status, v) = post_json(app, "/api/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn check_stream(events: &[(String, Value)], id: &str, grid: u32, atoms: u32, seed: u64) {
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("snapshot"));
    let total = u64::from(grid).pow(3);
    let mut last = 0;
    for (name, data) in events {
        let about = data
            .get("job_id")
            .or_else(|| data.get("id"))
            .and_then(Value::as_str);
        assert_eq!(
            about,
            Some(id),
            "an event of another job reached this stream: {data}"
        );
        if name == "progress" {
            let done = data["done"].as_u64().unwrap();
            assert!(
                done > last && done <= total,
                "progress goes up: {last} then {done}"
            );
            last = done;
        }
    }
    let (name, result) = events.last().unwrap();
    assert_eq!(name, "result", "the stream ends with the result");
    let result = &result["result"];
    let reference = kernel::reference_minimum(&atoms::generate(atoms, grid, seed), grid);
    let minimum = result["minimum"].as_f64().unwrap();
    assert!(
        (minimum - reference.value).abs() <= 1e-4 * reference.value.abs(),
        "{minimum} vs {}",
        reference.value
    );
    assert_eq!(
        result["point"],
        json!(reference.point),
        "same grid point as the f64 reference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atoms_job_runs_end_to_end_and_streams_its_progress() {
    let p = platform(WebConfig::default(), true).await;
    let id = create(&p.app, 24, 300, 11).await;
    let events = read_stream(&p.app, &id).await;
    check_stream(&events, &id, 24, 300, 11);
    assert!(
        events.iter().filter(|e| e.0 == "progress").count() >= 1,
        "progress was streamed"
    );
    let (_, job) = call(
        &p.app,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["progress"]["done"], 24 * 24 * 24);
    let (status, _) = call(
        &p.app,
        "GET",
        &format!("/api/v1/jobs/{id}/plane.png"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let replay = read_stream(&p.app, &id).await;
    assert_eq!(replay.len(), 1, "a finished job's stream is its snapshot");
    assert_eq!(replay[0].1["result"], job["result"]);
    let seed_object = p
        .engine
        .blobs
        .get(&object_store::path::Path::from(format!(
            "jobs/{id}/job.json"
        )))
        .await
        .unwrap();
    let seed_object: Value = serde_json::from_slice(&seed_object.bytes().await.unwrap()).unwrap();
    assert_eq!(
        seed_object["Atom values"].as_array().map(Vec::len),
        Some(300),
        "the seed's JSON object is kept"
    );
    assert_eq!(seed_object["Result"]["point"], job["result"]["point"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_at_once_each_stream_only_their_own_events() {
    let p = platform(WebConfig::default(), true).await;
    let (a, b) = (
        create(&p.app, 20, 400, 1).await,
        create(&p.app, 18, 500, 2).await,
    );
    let (ea, eb) = tokio::join!(read_stream(&p.app, &a), read_stream(&p.app, &b));
    check_stream(&ea, &a, 20, 400, 1);
    check_stream(&eb, &b, 18, 500, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_and_says_so() {
    let p = platform(WebConfig::default(), false).await;
    let id = create(&p.app, 8, 10, 1).await;
    let (status, v) = cancel(&p.app, &id).await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, v) = call(
        &p.app,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, error_of(&v).contains("already cancelled")),
        (StatusCode::CONFLICT, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_real_socket_on_port_0() {
    let p = platform(WebConfig::default(), true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = p.app.clone();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let create = Request::post(format!("http://{address}/api/v1/jobs"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"kind": "atoms", "params": {"grid_size": 30, "atom_count": 700, "seed": 4}})
                .to_string(),
        ))
        .unwrap();
    let response = client.request(create).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let events = client
        .request(
            Request::get(format!("http://{address}/api/v1/jobs/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    check_stream(&parse_sse(events.into_body()).await, &id, 30, 700, 4);
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_view_shows_depths_and_a_redrive_moves_dead_letters_back() {
    use nimbus_core::{OutgoingMessage, QueueName, ReceiveRequest};
    let p = common::platform_with_dead_letters(WebConfig::default(), None, &[("work", 1)]).await;
    let (status, v) = call(&p.app, "GET", "/api/v1/fleet", None, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no autoscaler yet: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("no autoscaler"),
        "{v}"
    );

    let (work, dead) = (
        QueueName::new("work").unwrap(),
        QueueName::new("work-dead").unwrap(),
    );
    let q = &p.engine.queue;
    let poison = OutgoingMessage::new("poison").attribute("kind", "task");
    q.send_batch(&work, vec![poison.clone(), poison])
        .await
        .unwrap();
    // Received once and never deleted: the next receive moves both to the dead-letter queue.
    let request = ReceiveRequest::new(10).visibility(Duration::ZERO);
    assert_eq!(q.receive(&work, request).await.unwrap().len(), 2);
    assert!(q.receive(&work, request).await.unwrap().is_empty());

    let (status, v) = call(&p.app, "GET", "/api/v1/queues", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let row = |v: &Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&v, "work")["dead_letter"], "work-dead");
    assert_eq!(row(&v, "work")["max_receives"], 1);
    assert_eq!(row(&v, "work-dead")["visible"], 2, "{v}");

    let (status, v) = redrive(&p.app, "work").await;
    assert_eq!(
        (status, v["moved"].as_u64(), v["from"].as_str()),
        (StatusCode::OK, Some(2), Some("work-dead")),
        "{v}"
    );
    let back = q.receive(&work, ReceiveRequest::new(10)).await.unwrap();
    assert_eq!(back.len(), 2, "both are back");
    assert_eq!(
        back[0].attributes.get("kind").map(String::as_str),
        Some("task"),
        "attributes kept"
    );
    assert_eq!(
        q.depth(&dead).await.unwrap(),
        Default::default(),
        "the dead-letter queue is empty"
    );

    let (status, v) = redrive(&p.app, "work-dead").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("has no dead-letter queue"),
        "{v}"
    );
    let (status, v) = redrive(&p.app, "nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = redrive(&p.app, "bad%20name").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // A dead-letter queue that also takes another queue's messages is not emptied into one.
    let options = q.queue_options(&work).await.unwrap();
    q.create_queue(&QueueName::new("other").unwrap(), &options)
        .await
        .unwrap();
    let (status, v) = redrive(&p.app, "work").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("also takes the messages of queue `other`"),
        "{v}"
    );
    for page in ["/fleet", "/queues"] {
        let (status, v) = call(&p.app, "GET", page, None, Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            v.as_str().unwrap().contains("<svg") || page == "/queues",
            "{page}"
        );
    }
}

/// GET a job until `done` holds of it (at most 20 s); the job then.
async fn job_once(app: &Router, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = call(
            app,
            "GET",
            &format!("/api/v1/jobs/{id}"),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Regression (issue 16): a job whose message was dead-lettered stayed `running` for ever. It
/// is failed now, naming where its message waits, and a redrive of its queue reopens it and
/// runs it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_behind_a_dead_letter_fails_and_a_redrive_runs_it_to_the_end() {
    use nimbus_core::{QueueName, ReceiveRequest};
    let p = common::platform_with_dead_letters(WebConfig::default(), None, &[(atoms::GENERATE, 1)])
        .await;
    let id = create(&p.app, 8, 20, 3).await;
    let (generate, dead) = (
        QueueName::new(atoms::GENERATE).unwrap(),
        QueueName::new(format!("{}-dead", atoms::GENERATE)).unwrap(),
    );
    // A worker that died with the message: the next receive moves it to the dead-letter queue.
    let request = ReceiveRequest::new(10).visibility(Duration::ZERO);
    assert_eq!(
        p.engine
            .queue
            .receive(&generate, request)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(p
        .engine
        .queue
        .receive(&generate, request)
        .await
        .unwrap()
        .is_empty());

    let failed = job_once(&p.app, &id, "the watcher fails the job", |v| {
        v["state"] == "failed"
    })
    .await;
    let error = error_of(&failed);
    for needle in [
        "dead-lettered",
        &format!("task `{id}/generate`"),
        "atoms-generate-dead",
        "/api/v1/queues/atoms-generate/redrive",
    ] {
        assert!(error.contains(needle), "the error names {needle}: {error}");
    }
    let kept = p.engine.queue.depth(&dead).await.unwrap();
    assert_eq!(
        kept.visible + kept.in_flight,
        1,
        "the dead letter stays where it is"
    );

    let (status, v) = redrive(&p.app, atoms::GENERATE).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["moved"].as_u64(), v["jobs_reopened"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let reopened = job_once(&p.app, &id, "reopened", |_| true).await;
    assert_eq!(reopened["state"], "running", "{reopened}");
    assert!(
        reopened.get("error").is_none(),
        "its error is cleared: {reopened}"
    );

    p.start_worker(ATOMS_WORKER);
    let done = job_once(&p.app, &id, "the redriven job ends", |v| {
        v["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let reference = kernel::reference_minimum(&atoms::generate(20, 8, 3), 8);
    let minimum = done["result"]["minimum"].as_f64().unwrap();
    assert!(
        (minimum - reference.value).abs() <= 1e-4 * reference.value.abs(),
        "{minimum}"
    );
}

/// Regression (issue 16): listing and counting jobs read every record. A page is read alone now,
/// and the counts are counters (jobs from before them are counted once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_by_pages_and_counted_without_reading_every_record() {
    let p = platform(WebConfig::default(), false).await;
    let records: Vec<_> = (0..100_000)
        .map(|_| {
            let job = JobStore::new_job("atoms", json!({ "grid_size": 1 }), 1);
            let key = nimbus_core::ItemKey::new("jobs", &job.id).unwrap();
            let value = bytes::Bytes::from(serde_json::to_vec(&job).unwrap());
            (key, value, nimbus_core::Condition::Absent)
        })
        .collect();
    let mut ids: Vec<String> = records.iter().map(|(k, _, _)| k.sort.clone()).collect();
    for chunk in records.chunks(5000) {
        p.engine.ledger.put_batch(chunk.to_vec()).await.unwrap();
    }
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let started = std::time::Instant::now();
    let response = p
        .app
        .clone()
        .oneshot(
            Request::get("/api/v1/jobs?limit=1000")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    println!(
        "first page of 1,000 of 100,000 jobs in {:?}",
        started.elapsed()
    );
    let mut cursor = response.headers()["x-next-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    let link = response.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains(&format!("cursor={cursor}>; rel=\"next\"")),
        "{link}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let first: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let page_ids = |page: &[Value]| -> Vec<String> {
        page.iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page_ids(&first), ids[..1000], "newest first");
    for n in 1..3 {
        let (status, page) = call(
            &p.app,
            "GET",
            &format!("/api/v1/jobs?limit=1000&cursor={cursor}"),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let page = page.as_array().unwrap();
        assert_eq!(
            page_ids(page),
            ids[n * 1000..(n + 1) * 1000],
            "page {n} follows on"
        );
        cursor = page_ids(page).last().unwrap().clone();
    }
    let (status, last) = call(
        &p.app,
        "GET",
        &format!("/api/v1/jobs?limit=5&cursor={}", ids[ids.len() - 3]),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, last.as_array().unwrap().len()),
        (StatusCode::OK, 2),
        "the last page is short"
    );
    let (status, bad) = call(
        &p.app,
        "GET",
        "/api/v1/jobs?cursor=../etc",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&bad).contains("is not a job id"), "{bad}");
    // A store from before the counters (the records above were written behind its back): the
    // next start counts its jobs once, then the counts are kept as jobs come and change.
    let marker = nimbus_core::ItemKey::new("jobs#counts", "since").unwrap();
    p.engine
        .ledger
        .delete(&marker, nimbus_core::Condition::Always)
        .await
        .unwrap();
    JobStore::new(p.engine.clone()).prepare(&[]).await.unwrap();
    let metrics = || async {
        let (_, text) = call(&p.app, "GET", "/metrics", None, Body::empty()).await;
        text.as_str().unwrap().to_string()
    };
    assert!(
        metrics()
            .await
            .contains("nimbus_jobs{state=\"queued\"} 100000"),
        "{}",
        metrics().await
    );
    let id = create(&p.app, 4, 10, 1).await;
    assert_eq!(cancel(&p.app, &id).await.0, StatusCode::OK);
    let text = metrics().await;
    assert!(
        text.contains("nimbus_jobs{state=\"queued\"} 100000")
            && text.contains("nimbus_jobs{state=\"cancelled\"} 1"),
        "{text}"
    );
}

//! Image classification through the web tier with a real model in an in-process worker: labels
//! for sample photos, several images at once, a 202 to poll, and a 4xx naming the file for every
//! kind of bad image.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use nimbus_web::WebConfig;
use nimbus_worker::Handlers;
use nimbus_workloads::classify::{self, model::Classifier, ClassifyHandler};
use nimbus_workloads::jobs::JobStore;
use serde_json::Value;
use tower::ServiceExt;

const PHOTOS: &str = "/usr/lib/python3/dist-packages/skimage/data";

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(PHOTOS).join(name))
        .expect("python3-skimage sample photos (./scripts/test.sh installs them)")
}

mod common;

use common::{Platform, WorkerSpec};

/// The web tier and a classifying worker with the real model. Requests wait for their labels as
/// long as the server allows: a loaded machine answers late, not wrong.
async fn service(config: WebConfig) -> Platform {
    let config = WebConfig {
        classify_wait: config.max_classify_wait,
        ..config
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let model = Arc::new(
        Classifier::load(
            &models.join("efficientnet-lite0.onnx"),
            &models.join("imagenet1k-labels.json"),
        )
        .unwrap(),
    );
    let handlers = move |engine: &nimbus_core::Engine| {
        Handlers::default().with(
            classify::KIND,
            ClassifyHandler::new(JobStore::new(engine.clone()), model.clone()),
        )
    };
    let spec = WorkerSpec {
        handlers: &handlers,
        queues: &[classify::REQUESTS],
        concurrency: 2,
    };
    common::platform(config, Some(spec)).await
}

async fn post(
    app: &Router,
    uri: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn multipart(files: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "nimbus-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn top_label(image: &Value) -> String {
    image["labels"][0]["label"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_in_the_body_gets_its_labels() {
    let s = service(WebConfig::default()).await;
    let (status, v) = post(
        &s.app,
        "/api/v1/classify?name=coffee.png",
        "image/png",
        photo("coffee.png"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let image = &v["images"][0];
    assert_eq!(
        (image["name"].as_str(), top_label(image).as_str()),
        (Some("coffee.png"), "espresso")
    );
    assert_eq!(image["labels"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_photos_as_multipart_each_get_their_labels() {
    let s = service(WebConfig::default()).await;
    let files = [
        ("cat.png", photo("chelsea.png")),
        ("rocket.jpg", photo("rocket.jpg")),
        ("bike.png", photo("motorcycle_left.png")),
    ];
    let (content_type, body) = multipart(&files);
    let (status, v) = post(&s.app, "/api/v1/upload", &content_type, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let images = v["images"].as_array().unwrap();
    let names: Vec<_> = images.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["cat.png", "rocket.jpg", "bike.png"],
        "results are listed per image, in order"
    );
    assert!(top_label(&images[0]).contains("cat"));
    assert_eq!(top_label(&images[1]), "missile");
    assert_eq!(top_label(&images[2]), "moped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_waiting_the_answer_is_a_job_to_poll() {
    let s = service(WebConfig::default()).await;
    let (status, v) = post(
        &s.app,
        "/api/v1/classify?wait=0",
        "image/png",
        photo("camera.png"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let location = v["location"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while std::time::Instant::now() < deadline {
        let response = s
            .app
            .clone()
            .oneshot(Request::get(&location).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let job: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        if job["state"] == "succeeded" {
            assert_eq!(top_label(&job["result"]["images"][0]), "tripod");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_a_4xx_naming_the_file_and_the_service_stays_up() {
    let s = service(WebConfig {
        max_image_bytes: 400_000,
        ..WebConfig::default()
    })
    .await;
    let chelsea = photo("chelsea.png");
    let mut bomb = Vec::new();
    let mut writer = png::Encoder::new(&mut bomb, 60_000, 60_000)
        .write_header()
        .unwrap();
    writer
        .write_chunk(
            png::chunk::IDAT,
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        )
        .unwrap();
    drop(writer);
    let cases: [(&str, Vec<u8>, StatusCode, &str); 5] = [
        (
            "notes.txt",
            b"just some text".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a readable image",
        ),
        // A truncated image passes the header check; the worker finds it out and the answer is 422.
        (
            "half.png",
            chelsea[..chelsea.len() / 3].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a readable image",
        ),
        (
            "bomb.png",
            bomb,
            StatusCode::PAYLOAD_TOO_LARGE,
            "60000 x 60000 pixels is over the limit",
        ),
        ("empty.png", Vec::new(), StatusCode::BAD_REQUEST, "empty"),
        (
            "big.png",
            photo("coffee.png").repeat(3),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit of 400000 bytes",
        ),
    ];
    for (name, bytes, status, says) in cases {
        let (got, v) = post(
            &s.app,
            &format!("/api/v1/classify?name={name}"),
            "application/octet-stream",
            bytes,
        )
        .await;
        assert_eq!(got, status, "{name}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("`{name}`")) && error.contains(says),
            "{name}: {error}"
        );
    }
    let (content_type, body) = multipart(&[
        ("good.png", photo("camera.png")),
        ("bad.txt", b"no".to_vec()),
    ]);
    let (status, v) = post(&s.app, "/api/v1/upload", &content_type, body).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "one bad file refuses the request: {v}"
    );
    assert!(v["error"].as_str().unwrap().contains("`bad.txt`"));
    let (status, v) = post(
        &s.app,
        "/api/v1/upload",
        "multipart/form-data; boundary=x",
        "--x--\r\n",
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str().unwrap().contains("no image")),
        (StatusCode::BAD_REQUEST, true),
        "{v}"
    );
    let (status, v) = post(
        &s.app,
        "/api/v1/classify?wait=1000",
        "image/png",
        photo("camera.png"),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str().unwrap().contains("wait 1000")),
        (StatusCode::BAD_REQUEST, true)
    );
    let (status, _) = post(
        &s.app,
        "/api/v1/classify?name=ok.png",
        "image/png",
        photo("camera.png"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the service is still up");
}

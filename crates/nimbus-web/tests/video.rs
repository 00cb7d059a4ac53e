//! Video jobs end to end through the web tier and a worker: images served by a local HTTP server
//! (allowed explicitly) or uploaded to blobs, an MP4 that ffprobe measures, range requests, and
//! every refusal on its job (the worker going on to the next job each time), with nothing left
//! in the worker's temporary directory.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use nimbus_core::Engine;
use nimbus_web::WebConfig;
use nimbus_workloads::jobs::JobStore;
use nimbus_workloads::kinds::{self, WorkerOptions};
use nimbus_workloads::video::{FetchPolicy, VideoOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;

use common::{Platform, WorkerSpec};

/// A PNG of `w` x `h` with a gradient tinted by `n`.
fn png(w: u32, h: u32, n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                [
                    (i % w * 255 / w) as u8,
                    (n * 60 % 256) as u8,
                    (i / w * 255 / h) as u8,
                ]
            })
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

/// A PNG declaring 100,000 x 100,000 pixels in a few bytes: a decompression bomb.
fn bomb() -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = png::Encoder::new(&mut out, 100_000, 100_000)
        .write_header()
        .unwrap();
    let empty_zlib = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    writer.write_chunk(png::chunk::IDAT, &empty_zlib).unwrap();
    drop(writer);
    out
}

/// The images' server: `/img/N.png` (640x480), `/wide.png`, `/text`, `/missing` (404),
/// `/bomb.png`, `/redirect` (to a host not on the allow-list), `/slow.png` (never answers).
async fn image_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let png_of = |bytes: Vec<u8>| ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/img/{n}",
            get(
                move |axum::extract::Path(n): axum::extract::Path<String>| async move {
                    let n: u32 = n.trim_end_matches(".png").parse().unwrap_or(0);
                    png_of(png(640, 480, n))
                },
            ),
        )
        .route(
            "/wide.png",
            get(move || async move { png_of(png(400, 100, 9)) }),
        )
        .route("/text", get(|| async { "this is not an image" }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/flaky.png",
            get(move || async move {
                // Every other request fails with 503: a retry gets the image.
                if flaky
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .is_multiple_of(2)
                {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    png_of(png(64, 48, 5))
                }
            }),
        )
        .route("/bomb.png", get(move || async move { png_of(bomb()) }))
        .route(
            "/redirect",
            get(move || async move {
                let to = format!("http://localhost:{}/img/0.png", addr.port());
                (StatusCode::FOUND, [(header::LOCATION, to)])
            }),
        )
        .route(
            "/slow.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Setup {
    platform: Platform,
    images: SocketAddr,
    work: tempfile::TempDir,
}

/// The web tier and one video worker (one job at a time) that may fetch from the image server;
/// `ffmpeg` is the executable it runs.
async fn setup(ffmpeg: &str) -> Setup {
    setup_with(ffmpeg, |_| {}).await
}

/// [`setup`] with the worker's video options changed by `change`.
async fn setup_with(ffmpeg: &str, change: impl FnOnce(&mut VideoOptions)) -> Setup {
    let images = image_server().await;
    let work = tempfile::tempdir().unwrap();
    let mut options = WorkerOptions {
        video: VideoOptions {
            ffmpeg: PathBuf::from(ffmpeg),
            fetch: FetchPolicy {
                allow: vec![format!("127.0.0.1:{}", images.port()).parse().unwrap()],
                max_bytes: 2 * 1024 * 1024,
                timeout: Duration::from_secs(20),
                ..FetchPolicy::default()
            },
            work_dir: Some(work.path().to_path_buf()),
            ..VideoOptions::default()
        },
        ..WorkerOptions::default()
    };
    change(&mut options.video);
    let handlers =
        move |engine: &Engine| kinds::handlers(&JobStore::new(engine.clone()), &options).unwrap();
    let spec = WorkerSpec {
        handlers: &handlers,
        queues: kinds::VIDEO.queues,
        concurrency: 1,
    };
    let platform = common::platform(WebConfig::default(), Some(spec)).await;
    Setup {
        platform,
        images,
        work,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.images)
    }

    async fn call(
        &self,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
        let response = self.platform.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    async fn post_job(&self, body: Value) -> (StatusCode, Value) {
        let request = Request::post("/api/v1/jobs")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, bytes) = self.call(request).await;
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// Creates a video job from `params`; its id.
    async fn create(&self, params: Value) -> String {
        let (status, job) = self
            .post_job(json!({ "kind": "video", "params": params }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    /// The job once it has ended.
    async fn ended(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (_, _, bytes) = self
                .call(
                    Request::get(format!("/api/v1/jobs/{id}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            let job: Value = serde_json::from_slice(&bytes).unwrap();
            if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job stuck: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with `expected` in the job's error; then the worker still makes a video.
    async fn refused(&self, params: Value, expected: &str) {
        let id = self.create(params).await;
        let job = self.ended(&id).await;
        assert_eq!(job["state"], "failed", "{job}");
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
        self.assert_clean();
        let next = self
            .create(json!({ "urls": [self.url("/img/1.png")] }))
            .await;
        let job = self.ended(&next).await;
        assert_eq!(
            job["state"], "succeeded",
            "the worker goes on after a refusal: {job}"
        );
    }

    /// Nothing is left in the worker's temporary directory.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    async fn video(
        &self,
        id: &str,
        range: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
        let mut request = Request::get(format!("/api/v1/jobs/{id}/video"));
        if let Some(r) = range {
            request = request.header(header::RANGE, r);
        }
        self.call(request.body(Body::empty()).unwrap()).await
    }
}

/// What ffprobe says of an MP4: (duration s, frames, width, height, codec).
fn probe(mp4: &[u8]) -> (f64, u64, u64, u64, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.mp4");
    std::fs::write(&file, mp4).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height,codec_name:format=duration",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .expect("ffprobe (Debian's ffmpeg; ./scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        v["format"]["duration"].as_str().unwrap().parse().unwrap(),
        s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
        s["width"].as_u64().unwrap(),
        s["height"].as_u64().unwrap(),
        s["codec_name"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_video_of_fetched_images_has_the_frames_duration_and_size_asked_for() {
    let s = setup("ffmpeg").await;
    let urls: Vec<String> = (0..4).map(|i| s.url(&format!("/img/{i}.png"))).collect();
    let id = s
        .create(json!({ "urls": urls, "frame_seconds": 0.5, "width": 320, "height": 240 }))
        .await;
    let job = s.ended(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["progress"]["done"], job["progress"]["total"]);
    let result = &job["result"];
    assert_eq!(result["video"], format!("/api/v1/jobs/{id}/video"));
    assert_eq!(
        (result["images"].as_u64(), result["frames"].as_u64()),
        (Some(4), Some(4))
    );
    let (status, headers, mp4) = s.video(&id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(mp4.len() as u64, result["bytes"].as_u64().unwrap());
    let (seconds, frames, w, h, codec) = probe(&mp4);
    assert!((seconds - 2.0).abs() < 0.05, "duration {seconds}");
    assert_eq!((frames, w, h, codec.as_str()), (4, 320, 240, "h264"));
    // A browser's player seeks with ranges.
    let (status, headers, part) = s.video(&id, Some("bytes=100-199")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes 100-199/{}", mp4.len())
    );
    assert_eq!(&part[..], &mp4[100..200]);
    let (status, _, tail) = s.video(&id, Some("bytes=-10")).await;
    assert_eq!(
        (status, &tail[..]),
        (StatusCode::PARTIAL_CONTENT, &mp4[mp4.len() - 10..])
    );
    let (status, headers, _) = s.video(&id, Some(&format!("bytes={}-", mp4.len()))).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes */{}", mp4.len())
    );
    s.assert_clean();
}

#[tokio::test]
async fn an_upload_with_a_crossfade_makes_a_video_from_blobs() {
    let s = setup("ffmpeg").await;
    let boundary = "nimbus-test-boundary";
    let mut body = Vec::new();
    let params = json!({ "frame_seconds": 1, "crossfade_seconds": 0.4, "fps": 10, "width": 160, "height": 120 });
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{params}\r\n"
        )
        .as_bytes(),
    );
    for (i, image) in [png(640, 480, 1), png(400, 100, 2), png(50, 300, 3)]
        .iter()
        .enumerate()
    {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(image);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let request = Request::post("/api/v1/jobs")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (status, _, bytes) = s.call(request).await;
    let job: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let keys = job["params"]["keys"].as_array().unwrap();
    assert!(
        keys.len() == 3
            && keys
                .iter()
                .all(|k| k.as_str().unwrap().starts_with("uploads/video/"))
    );
    let id = job["id"].as_str().unwrap();
    let job = s.ended(id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, _, mp4) = s.video(id, None).await;
    let (seconds, frames, w, h, _) = probe(&mp4);
    assert!((seconds - 3.0).abs() < 0.05, "duration {seconds}");
    assert_eq!((frames, w, h), (30, 160, 120));
    assert_eq!(job["result"]["frames"], 30);
    s.assert_clean();
}

#[tokio::test]
async fn a_missing_ffmpeg_fails_the_job_saying_so() {
    let s = setup("/nonexistent/ffmpeg").await;
    for _ in 0..2 {
        let id = s.create(json!({ "urls": [s.url("/img/1.png")] })).await;
        let job = s.ended(&id).await;
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains("cannot start ffmpeg") && error.contains("--ffmpeg"),
            "{error}"
        );
        s.assert_clean();
    }
}

#[tokio::test]
async fn a_host_off_the_allow_list_is_refused_on_its_job() {
    let s = setup("ffmpeg").await;
    let off_list = "http://127.0.0.1:1/img/1.png";
    s.refused(
        json!({ "urls": [off_list] }),
        "127.0.0.1:1 is not on this worker's allow-list",
    )
    .await;
}

#[tokio::test]
async fn a_redirect_off_the_allow_list_is_refused_on_its_job() {
    let s = setup("ffmpeg").await;
    s.refused(json!({ "urls": [s.url("/redirect")] }), "redirected to")
        .await;
}

#[tokio::test]
async fn a_url_that_fails_fails_its_job() {
    let s = setup("ffmpeg").await;
    s.refused(
        json!({ "urls": [s.url("/img/0.png"), s.url("/missing")] }),
        "image 2: `",
    )
    .await;
    let job = s
        .ended(&s.create(json!({ "urls": [s.url("/missing")] })).await)
        .await;
    assert!(
        job["error"].as_str().unwrap().contains("answered 404"),
        "{job}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_an_image_fails_its_job() {
    let s = setup("ffmpeg").await;
    s.refused(
        json!({ "urls": [s.url("/text")] }),
        "image 1: not a readable image",
    )
    .await;
}

#[tokio::test]
async fn a_decompression_bomb_fails_its_job() {
    let s = setup("ffmpeg").await;
    s.refused(
        json!({ "urls": [s.url("/bomb.png")] }),
        "100000 x 100000 pixels is over the limit",
    )
    .await;
}

#[tokio::test]
async fn an_upload_missing_or_over_the_size_limit_fails_its_job() {
    let s = setup("ffmpeg").await;
    let upload = Request::post("/api/v1/jobs")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({ "kind": "video", "params": { "keys": ["uploads/none/such"] } }).to_string(),
        ))
        .unwrap();
    let (status, _, bytes) = s.call(upload).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let job: Value = serde_json::from_slice(&bytes).unwrap();
    let job = s.ended(job["id"].as_str().unwrap()).await;
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("upload `uploads/none/such` does not exist"),
        "{job}"
    );
    let key = "uploads/big/one";
    s.platform
        .engine
        .blobs
        .put(
            &key.into(),
            bytes::Bytes::from(vec![0u8; 3 * 1024 * 1024]).into(),
        )
        .await
        .unwrap();
    s.refused(
        json!({ "keys": [key] }),
        "is over the limit of 2097152 bytes",
    )
    .await;
}

#[tokio::test]
async fn images_over_the_total_limit_of_a_video_fail_its_job() {
    let s = setup_with("ffmpeg", |o| o.max_total_bytes = 100).await;
    let urls: Vec<String> = (0..10).map(|i| s.url(&format!("/img/{i}.png"))).collect();
    let id = s.create(json!({ "urls": urls })).await;
    let job = s.ended(&id).await;
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("over the limit of 100 bytes in all"),
        "{error}"
    );
    s.assert_clean();
}

#[tokio::test]
async fn bad_parameters_are_refused_before_anything_is_queued() {
    let s = setup("ffmpeg").await;
    let many: Vec<String> = (0..501).map(|i| s.url(&format!("/img/{i}.png"))).collect();
    let cases = [
        (
            json!({ "urls": [s.url("/img/1.png")], "frame_seconds": 0 }),
            "frame_seconds 0 is outside 0.04 to 60",
        ),
        (
            json!({ "urls": [s.url("/img/1.png")], "frame_seconds": 86400 }),
            "frame_seconds 86400 is outside",
        ),
        (
            json!({ "urls": many }),
            "501 images is over the limit of 500",
        ),
        (json!({ "urls": [] }), "no images"),
        (
            json!({ "keys": ["uploads/../jobs/x/video.mp4"] }),
            "not a valid upload key",
        ),
        (json!({ "keys": ["/etc/passwd"] }), "not under uploads/"),
        (
            json!({ "urls": ["file:///etc/passwd"] }),
            "only http and https",
        ),
        (
            json!({ "urls": [s.url("/img/1.png")], "width": 333 }),
            "width 333 must be even",
        ),
        (
            json!({ "urls": [s.url("/img/1.png")], "crossfade_seconds": 0.5, "fps": 25, "frame_seconds": 0.5 }),
            "crossfade_seconds 0.5",
        ),
        (
            json!({ "urls": [s.url("/img/1.png")], "crossfade_seconds": 0.1, "fps": 25, "frame_seconds": 0.5001 }),
            "whole number of frames",
        ),
        (
            json!({ "urls": [s.url("/img/1.png")], "speed": 2 }),
            "unknown field `speed`",
        ),
    ];
    for (params, expected) in cases {
        let (status, body) = s
            .post_job(json!({ "kind": "video", "params": params }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
    }
    let (_, jobs) = {
        let (status, _, bytes) = s
            .call(Request::get("/api/v1/jobs").body(Body::empty()).unwrap())
            .await;
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    assert_eq!(jobs.as_array().unwrap().len(), 0, "no job was made: {jobs}");
    let (status, _, body) = s.video("0190b5f3-0000-7000-8000-000000000000", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn a_cancelled_job_stops_its_fetch_and_leaves_nothing_behind() {
    let s = setup("ffmpeg").await;
    let id = s
        .create(json!({ "urls": [s.url("/img/1.png"), s.url("/slow.png")] }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(s.work.path()).unwrap().next().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = s
        .call(
            Request::post(format!("/api/v1/jobs/{id}/cancel"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(s.work.path()).unwrap().next().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled job's directory stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.ended(&id).await["state"], "cancelled");
    let next = s.create(json!({ "urls": [s.url("/img/2.png")] })).await;
    assert_eq!(
        s.ended(&next).await["state"],
        "succeeded",
        "the worker goes on"
    );
}

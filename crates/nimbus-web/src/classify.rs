//! Image classification over HTTP: `POST /api/v1/classify` (one image as the body, or several as
//! multipart) and `POST /api/v1/upload` (seed 004: several images as multipart). Each image is
//! checked here first (size, format, dimensions: a decompression bomb is refused from its
//! header), so a bad one gets a 4xx naming it and nothing is queued; then the request waits for
//! the job's result up to `wait` seconds, or answers 202 with the job to poll.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::{JobEvent, JobState};
use nimbus_workloads::classify::{self, check_header, ClassifyResult, ImageError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The most images in one request.
pub const MAX_IMAGES: usize = 100;

#[derive(Debug, Deserialize)]
pub struct ClassifyQuery {
    /// Seconds to wait for the labels before answering 202 (default: the server's).
    wait: Option<f64>,
    /// The file name of a single image sent as the body.
    name: Option<String>,
}

pub async fn classify(
    State(state): State<AppState>,
    query: Result<Query<ClassifyQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = wait_of(&state, query.wait)?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let images = if is_multipart {
        read_multipart(&state, request).await?
    } else {
        let name = short_name(query.name.as_deref().unwrap_or("image"));
        let limit = state.config.max_image_bytes;
        let body = Bytes::from_request(request, &state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!("image `{name}` is over the limit of {limit} bytes"))
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        vec![(name, body)]
    };
    run(&state, images, wait).await
}

/// `POST /api/v1/upload`: seed 004's upload of several images (multipart), results per image.
pub async fn upload(
    state: State<AppState>,
    query: Result<Query<ClassifyQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    classify(state, query, request).await
}

/// A file name as reported back: at most 255 characters.
fn short_name(name: &str) -> String {
    name.chars().take(255).collect()
}

fn wait_of(state: &AppState, asked: Option<f64>) -> Result<Duration, ApiError> {
    let max = state.config.max_classify_wait;
    match asked {
        None => Ok(state.config.classify_wait),
        Some(s) if s.is_finite() && s >= 0.0 && s <= max.as_secs_f64() => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(s) => Err(ApiError::bad_request(format!(
            "wait {s} is outside 0 to {} seconds",
            max.as_secs()
        ))),
    }
}

async fn read_multipart(
    state: &AppState,
    request: Request,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    Ok(read_form(state, request, MAX_IMAGES).await?.files)
}

/// A multipart form: its files (name, bytes) in order, and its `params` text field.
pub struct Form {
    /// Every part but `params`, by file name (or field name).
    pub files: Vec<(String, Bytes)>,
    /// The `params` field, when there is one.
    pub params: Option<String>,
}

/// Reads a multipart form of at most `max_files` files within the upload limit.
pub async fn read_form(
    state: &AppState,
    request: Request,
    max_files: usize,
) -> Result<Form, ApiError> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut form = Form {
        files: Vec::new(),
        params: None,
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
    {
        let is_params = field.file_name().is_none() && field.name() == Some("params");
        let name = short_name(field.file_name().or(field.name()).unwrap_or("image"));
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "the upload is over the limit of {} bytes (at `{name}`)",
                    state.config.max_upload_bytes
                ))
            } else {
                ApiError::bad_request(format!("image `{name}`: {e}"))
            }
        })?;
        if is_params {
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::bad_request("the `params` field is not UTF-8 text"))?;
            form.params = Some(text);
            continue;
        }
        form.files.push((name, bytes));
        if form.files.len() > max_files {
            return Err(ApiError::bad_request(format!(
                "more than {max_files} images in one request"
            )));
        }
    }
    Ok(form)
}

/// Checks an image as received: within the size limit, and its header (format, dimensions:
/// a decompression bomb is refused here).
pub fn check_image(state: &AppState, name: &str, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.len() > state.config.max_image_bytes {
        return Err(ApiError::too_large(format!(
            "image `{name}` is {} bytes, over the limit of {} bytes",
            bytes.len(),
            state.config.max_image_bytes
        )));
    }
    check_header(bytes).map(drop).map_err(|e| refusal(name, &e))
}

async fn run(
    state: &AppState,
    images: Vec<(String, Bytes)>,
    wait: Duration,
) -> Result<Response, ApiError> {
    if let Some(reason) = &state.config.classify_off {
        return Err(ApiError::unavailable(format!(
            "image recognition is off on this deployment: {reason}"
        )));
    }
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "no image in the request: send one as the body, or several as multipart form data",
        ));
    }
    for (name, bytes) in &images {
        check_image(state, name, bytes)?;
    }
    let job = classify::submit(&state.store, images).await?;
    let mut rx = state.hub.subscribe(&job.id);
    // Events published before the subscription are not lost: the job record has them.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = state.store.get(&job.id).await?;
        if current.state == JobState::Cancelled {
            return Err(ApiError::conflict(format!(
                "job {} was cancelled",
                current.id
            )));
        }
        if current.state.is_terminal() {
            return Ok(answer(
                &current.id,
                current.result.unwrap_or_default(),
                current.error,
            ));
        }
        let event = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => e,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        };
        match event {
            JobEvent::Result { result, .. } => return Ok(answer(&job.id, result, None)),
            JobEvent::Failed { error, .. } => return Ok(answer(&job.id, Value::Null, Some(error))),
            JobEvent::Cancelled { .. } => {
                return Err(ApiError::conflict(format!("job {} was cancelled", job.id)))
            }
            _ => {}
        }
    }
    let location = format!("/api/v1/jobs/{}", job.id);
    let body = json!({ "job_id": job.id, "state": "queued", "location": location,
                       "message": "the labels are not ready yet; GET the location for them" });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

fn refusal(name: &str, e: &ImageError) -> ApiError {
    match e {
        ImageError::TooLarge { .. } => ApiError::too_large(format!("image `{name}`: {e}")),
        _ => ApiError::bad_request(format!("image `{name}`: {e}")),
    }
}

/// 200 with every image's labels, or 422 naming the images that could not be read.
fn answer(job_id: &str, result: Value, error: Option<String>) -> Response {
    if let Some(error) = error {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "job_id": job_id, "error": error })),
        )
            .into_response();
    }
    let images = serde_json::from_value::<ClassifyResult>(result)
        .map(|r| r.images)
        .unwrap_or_default();
    let failed: Vec<String> = images
        .iter()
        .filter_map(|i| Some(format!("image `{}`: {}", i.name, i.error.as_ref()?)))
        .collect();
    if !failed.is_empty() {
        let body = json!({ "job_id": job_id, "error": failed.join("; "), "images": images });
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    Json(json!({ "job_id": job_id, "images": images })).into_response()
}

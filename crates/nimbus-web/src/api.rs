//! The REST API under `/api/v1`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::{JobEvent, JobState};
use nimbus_workloads::atoms::{self, AtomsParams};
use nimbus_workloads::jobs::JobStore;
use object_store::path::Path as BlobPath;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::{events, AppState};

/// `POST /api/v1/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    kind: String,
    params: serde_json::Value,
}

fn json_error(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = rejection.body_text();
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return ApiError::bad_request("send the job as JSON with `Content-Type: application/json`");
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(message);
    }
    ApiError::bad_request(message)
}

/// `POST /api/v1/jobs`: a job as JSON (`{"kind": ..., "params": ...}`), or a video job as a
/// multipart upload of its images.
pub async fn create_job(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        return crate::video::create_from_upload(&state, request).await;
    }
    let Json(request) =
        <Json<CreateJob> as axum::extract::FromRequest<AppState>>::from_request(request, &state)
            .await
            .map_err(json_error)?;
    match request.kind.as_str() {
        atoms::KIND => create_atoms_job(&state, request.params).await,
        nimbus_workloads::video::KIND => crate::video::create(&state, request.params).await,
        other => Err(ApiError::bad_request(format!(
            "unknown job kind `{other}`; known kinds: {}",
            nimbus_workloads::kinds::jobs_api_kinds()
        ))),
    }
}

async fn create_atoms_job(
    state: &AppState,
    params: serde_json::Value,
) -> Result<Response, ApiError> {
    let mut params: AtomsParams = serde_json::from_value(params)
        .map_err(|e| ApiError::bad_request(format!("atoms parameters: {e}")))?;
    let limits = state.config.limits;
    let count = match (&params.atoms_key, params.atom_count) {
        (Some(key), _) => uploaded_count(state, key, params.grid_size).await?,
        (None, Some(count)) => count,
        (None, None) => {
            return Err(ApiError::bad_request(
                "atoms parameters: give atom_count, or atoms_key from POST /api/v1/atoms",
            ))
        }
    };
    limits
        .check(params.grid_size, count)
        .map_err(ApiError::bad_request)?;
    params.atom_count = Some(count);
    let grid = params.grid_size;
    let n = u64::from(grid);
    let params = serde_json::to_value(&params).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let job = JobStore::new_job(atoms::KIND, params, n * n * n);
    state.store.create(&job).await?;
    if let Err(e) = atoms::start_job(&state.store, &job.id, grid, count).await {
        fail_quietly(state, &job.id, &format!("could not start the job: {e}")).await;
        return Err(e.into());
    }
    tracing::info!(job_id = %job.id, grid = n, atoms = count, "atoms job created");
    Ok(created(job))
}

/// 201 with a job just created, and its location.
pub(crate) fn created(job: nimbus_core::Job) -> Response {
    let location = format!("/api/v1/jobs/{}", job.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response()
}

/// Ends a job that could not be set up: never leave a job queued that no worker will see.
async fn fail_quietly(state: &AppState, job_id: &str, error: &str) {
    if let Err(e) = state.store.fail(job_id, error).await {
        tracing::warn!(job_id, error = %e, "could not mark the job failed");
    }
}

/// The atom count of an upload, checked to lie inside the grid.
async fn uploaded_count(state: &AppState, key: &str, n: u32) -> Result<u32, ApiError> {
    if !key.starts_with("uploads/") || key.contains("..") {
        return Err(ApiError::bad_request(format!(
            "atoms_key `{key}` is not an upload key from POST /api/v1/atoms"
        )));
    }
    let got = state.store.engine().blobs.get(&BlobPath::from(key)).await;
    let bytes = match got {
        Ok(r) => r.bytes().await.map_err(blob_error)?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::bad_request(format!(
                "atoms_key `{key}` does not exist"
            )))
        }
        Err(e) => return Err(blob_error(e)),
    };
    let atoms = atoms::Atoms::from_bytes(&bytes)
        .ok_or_else(|| ApiError::bad_request(format!("upload `{key}` is corrupt")))?;
    atoms::check_inside(&atoms, n).map_err(ApiError::bad_request)?;
    u32::try_from(atoms.len()).map_err(|_| ApiError::bad_request("too many atoms"))
}

/// A blob store failure as a 503 (its details only in the log).
pub(crate) fn blob_error(e: object_store::Error) -> ApiError {
    ApiError::from(nimbus_core::Error::new(
        nimbus_core::ErrorKind::Unavailable,
        format!("blob store: {e}"),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/v1/jobs`: a page of jobs, newest first; when there may be more, the `Link` header
/// (`rel="next"`) and `x-next-cursor` say where the next page starts.
pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is outside 1 to 1000"
        )));
    }
    let cursor = query.cursor.as_deref();
    if let Some(c) = cursor {
        if uuid::Uuid::parse_str(c).is_err() {
            return Err(ApiError::bad_request(format!(
                "cursor `{}` is not a job id (take it from the x-next-cursor header)",
                c.chars().take(64).collect::<String>()
            )));
        }
    }
    let (jobs, next) = state.store.page(limit, cursor).await?;
    let mut response = Json(jobs).into_response();
    if let Some(next) = next {
        let headers = response.headers_mut();
        let link = format!("</api/v1/jobs?limit={limit}&cursor={next}>; rel=\"next\"");
        if let (Ok(link), Ok(next)) = (link.parse(), next.parse()) {
            headers.insert(header::LINK, link);
            headers.insert(NEXT_CURSOR, next);
        }
    }
    Ok(response)
}

/// The header naming the next page's cursor.
const NEXT_CURSOR: &str = "x-next-cursor";

pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.store.get(&id).await?).into_response())
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (job, changed) = state
        .store
        .update(&id, |job| {
            if job.state.is_terminal() {
                return false;
            }
            job.state = JobState::Cancelled;
            true
        })
        .await?;
    if !changed {
        return Err(ApiError::conflict(format!(
            "job {id} already {}",
            job.state.as_str()
        )));
    }
    state
        .store
        .publish(&JobEvent::Cancelled { job_id: id })
        .await?;
    Ok(Json(job).into_response())
}

pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Watch first, then read: nothing published in between is missed.
    let rx = state.hub.subscribe(&id);
    let job = state.store.get(&id).await?;
    Ok(events::stream(state.store.clone(), rx, job).into_response())
}

pub async fn plane_png(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.store.get(&id).await?;
    match state
        .store
        .engine()
        .blobs
        .get(&BlobPath::from(format!("jobs/{id}/plane.png")))
        .await
    {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(blob_error)?;
            Ok((
                [
                    (header::CONTENT_TYPE, "image/png"),
                    (header::CACHE_CONTROL, "max-age=86400"),
                ],
                bytes,
            )
                .into_response())
        }
        Err(object_store::Error::NotFound { .. }) => {
            Err(ApiError::not_found(format!("job {id} has no picture yet")))
        }
        Err(e) => Err(blob_error(e)),
    }
}

pub async fn upload_atoms(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the atom file is over the upload limit of {} bytes",
                state.config.upload_limit
            ))
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the atom file is not UTF-8 text"))?;
    let atoms =
        atoms::parse_atoms(text, state.config.limits.max_atoms).map_err(ApiError::bad_request)?;
    let key = format!("uploads/{}.bin", uuid::Uuid::now_v7());
    state
        .store
        .engine()
        .blobs
        .put(
            &BlobPath::from(key.as_str()),
            Bytes::from(atoms.to_bytes()).into(),
        )
        .await
        .map_err(blob_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "atoms_key": key, "atom_count": atoms.len() })),
    )
        .into_response())
}

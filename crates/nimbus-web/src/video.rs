//! Video jobs over HTTP (seed 002's Animoto): created by `POST /api/v1/jobs` with
//! `{"kind":"video","params":{...}}` or as a multipart upload of images (with an optional
//! `params` JSON field), the MP4 served at `GET /api/v1/jobs/{id}/video` with HTTP range
//! requests (a browser's player seeks with them), and the GUI's pages: `/video` to make one,
//! and a video job's own page with its progress bar and player.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use nimbus_core::Job;
use nimbus_workloads::video::{self, VideoParams};
use object_store::path::Path as BlobPath;
use object_store::{GetOptions, GetRange};

use crate::classify::{check_image, read_form};
use crate::error::ApiError;
use crate::pages::{escape, page};
use crate::AppState;

/// `POST /api/v1/jobs` with kind `video`: checks the parameters and queues the job.
pub async fn create(state: &AppState, params: serde_json::Value) -> Result<Response, ApiError> {
    let params: VideoParams = serde_json::from_value(params)
        .map_err(|e| ApiError::bad_request(format!("video parameters: {e}")))?;
    submit(state, &params).await
}

async fn submit(state: &AppState, params: &VideoParams) -> Result<Response, ApiError> {
    params
        .validate(&state.config.video_limits)
        .map_err(|e| ApiError::bad_request(format!("video parameters: {e}")))?;
    let job = video::submit(&state.store, params).await?;
    tracing::info!(job_id = %job.id, images = params.images(), "video job created");
    Ok(crate::api::created(job))
}

/// `POST /api/v1/jobs` as multipart: the images as files (each checked here: size, format,
/// dimensions), stored in blobs under `uploads/video/`, and the other parameters in a `params`
/// field (JSON, without `urls` or `keys`).
pub async fn create_from_upload(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let max = state.config.video_limits.max_images;
    let form = read_form(state, request, max).await?;
    if form.files.is_empty() {
        return Err(ApiError::bad_request(
            "no image in the upload: send the images as files of a multipart form",
        ));
    }
    let mut params: VideoParams = match &form.params {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("the `params` field: {e}")))?,
        None => serde_json::from_str("{}").map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    if !params.urls.is_empty() || !params.keys.is_empty() {
        return Err(ApiError::bad_request(
            "the `params` field of an upload takes no `urls` or `keys`: the files are the images",
        ));
    }
    for (name, bytes) in &form.files {
        check_image(state, name, bytes)?;
    }
    // Checked whole before anything is stored: a refused upload leaves no blobs behind.
    let batch = uuid::Uuid::now_v7();
    params.keys = (0..form.files.len())
        .map(|i| format!("{}video/{batch}/{i:05}", video::UPLOADS))
        .collect();
    params
        .validate(&state.config.video_limits)
        .map_err(|e| ApiError::bad_request(format!("video parameters: {e}")))?;
    for (key, (_, bytes)) in params.keys.iter().zip(form.files) {
        state
            .store
            .engine()
            .blobs
            .put(&BlobPath::from(key.as_str()), bytes.into())
            .await
            .map_err(crate::api::blob_error)?;
    }
    submit(state, &params).await
}

/// A byte range asked for by a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// No range, or one this server ignores (several ranges, a syntax it does not know): the
    /// whole body, as RFC 9110 allows.
    Whole,
    /// Bytes `start..=end` (already within the body).
    Range(u64, u64),
    /// Nothing of the body lies in the range.
    Unsatisfiable,
}

/// The range `value` asks of a body of `size` bytes.
fn asked_range(value: Option<&str>, size: u64) -> Asked {
    let Some(spec) = value.and_then(|v| {
        let v = v.trim();
        let unit = v.get(..6)?;
        unit.eq_ignore_ascii_case("bytes=").then(|| &v[6..])
    }) else {
        return Asked::Whole;
    };
    if spec.contains(',') {
        return Asked::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Asked::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => Asked::Unsatisfiable,
            Some(n) if size > 0 => Asked::Range(size.saturating_sub(n), size - 1),
            Some(_) => Asked::Unsatisfiable,
            None => Asked::Whole,
        },
        (false, _) => match (
            parse(first),
            if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            },
        ) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    Asked::Unsatisfiable
                } else {
                    Asked::Range(start, end.min(size - 1))
                }
            }
            _ => Asked::Whole,
        },
        (true, true) => Asked::Whole,
    }
}

/// `GET /api/v1/jobs/{id}/video`: the MP4, whole or the range asked for.
pub async fn video_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = state.store.get(&id).await?;
    if job.kind != video::KIND {
        return Err(ApiError::not_found(format!(
            "job {id} is a {} job; only video jobs have a video",
            job.kind
        )));
    }
    // Only a finished video is served: a run cut short may have left one it would replace.
    if job.state != nimbus_core::JobState::Succeeded {
        return Err(ApiError::not_found(format!(
            "job {id} has no video: it is {}",
            job.state.as_str()
        )));
    }
    let path = BlobPath::from(video::video_key(&id));
    let blobs = &state.store.engine().blobs;
    let meta = match blobs.head(&path).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(format!(
                "job {id} has no video yet (it is {})",
                job.state.as_str()
            )))
        }
        Err(e) => return Err(crate::api::blob_error(e)),
    };
    let size = meta.size;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) =
        match asked_range(range, size) {
            Asked::Whole => (StatusCode::OK, None),
            Asked::Range(start, end) => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
            Asked::Unsatisfiable => return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [
                    (header::CONTENT_RANGE, format!("bytes */{size}")),
                    (header::ACCEPT_RANGES, "bytes".to_string()),
                ],
                Json(serde_json::json!({
                    "error": format!("the range asked for lies outside the video's {size} bytes")
                })),
            )
                .into_response()),
        };
    let options = GetOptions {
        range: range.map(|(start, end)| GetRange::Bounded(start..end + 1)),
        ..GetOptions::default()
    };
    let got = blobs
        .get_opts(&path, options)
        .await
        .map_err(crate::api::blob_error)?;
    let length = range.map_or(size, |(start, end)| end - start + 1);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "video/mp4")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, length)
        .header(header::CACHE_CONTROL, "max-age=86400");
    if let Some((start, end)) = range {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    response
        .body(Body::from_stream(got.into_stream()))
        .map_err(|e| ApiError::from(nimbus_core::Error::internal(e.to_string())))
}

/// `/video`: make a video from dropped images or a list of URLs.
pub async fn video_page(State(state): State<AppState>) -> Html<String> {
    let limits = state.config.video_limits;
    let body = format!(
        r#"<section class=card><h1>Images to video</h1>
<p class=hint>Seed 002's Animoto job: a worker fetches each image, fits it into the frame and runs ffmpeg to make an H.264 MP4.</p>
<div class=drop id=drop>Drop images here, or click to choose (PNG, JPEG, GIF, BMP, WebP; up to {max_images})<input id=files type=file accept="image/*" multiple hidden></div>
<p class=hint id=chosen></p>
<div style="margin:14px 0"><label for=urls>…or image URLs, one a line</label><textarea id=urls rows=4 style="width:100%;font:14px monospace;padding:8px;border:1px solid #c8cedb;border-radius:6px" placeholder="https://example.com/a.jpg"></textarea><div class=hint>the workers fetch only from hosts they allow (<code>--allow-fetch</code>)</div></div>
<div class=row>
 <div><label for=frame>Seconds per image</label><input id=frame type=number min=0.04 max=60 step=0.01 value=1><div class=hint>0.04 to 60</div></div>
 <div><label for=fade>Cross-fade seconds</label><input id=fade type=number min=0 step=0.01 value=0><div class=hint>0 for cuts; less than the seconds per image</div></div>
 <div><label for=size>Frame size</label><select id=size style="width:100%;padding:8px;border:1px solid #c8cedb;border-radius:6px"><option value="640x480">640 x 480</option><option value="1280x720">1280 x 720</option><option value="320x240">320 x 240</option></select></div>
</div>
<button id=make>Make the video</button> <span id=msg class=error></span></section>
<script>
const drop = document.getElementById('drop'), files = document.getElementById('files'), msg = document.getElementById('msg');
let chosen = [];
const note = () => document.getElementById('chosen').textContent = chosen.length ? chosen.length + ' image(s): ' + chosen.map((f) => f.name).join(', ') : '';
drop.onclick = () => files.click();
files.onchange = () => {{ chosen = [...files.files]; note(); }};
drop.ondragover = (e) => {{ e.preventDefault(); drop.classList.add('over'); }};
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => {{ e.preventDefault(); drop.classList.remove('over'); chosen = [...e.dataTransfer.files]; note(); }};
document.getElementById('make').onclick = async () => {{
  msg.textContent = '';
  const [width, height] = document.getElementById('size').value.split('x').map(Number);
  const params = {{ frame_seconds: Number(document.getElementById('frame').value), crossfade_seconds: Number(document.getElementById('fade').value), width, height }};
  const urls = document.getElementById('urls').value.split('\n').map((u) => u.trim()).filter((u) => u);
  let r;
  if (chosen.length) {{
    const form = new FormData(); form.append('params', JSON.stringify(params)); chosen.forEach((f) => form.append('image', f, f.name));
    r = await fetch('/api/v1/jobs', {{ method: 'POST', body: form }});
  }} else {{
    r = await fetch('/api/v1/jobs', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, body: JSON.stringify({{ kind: 'video', params: {{ ...params, urls }} }}) }});
  }}
  const j = await r.json();
  if (!r.ok) {{ msg.textContent = j.error; return; }}
  location.href = '/jobs/' + j.id;
}};
</script>"#,
        max_images = limits.max_images,
    );
    page("images to video", &body)
}

/// A video job's page: its state, its progress bar, and the player once the video is made.
pub fn job_page(job: &Job) -> Html<String> {
    let cancel = if job.state.is_terminal() {
        ""
    } else {
        "<button class=secondary id=cancel>Cancel</button>"
    };
    let images =
        serde_json::from_value::<VideoParams>(job.params.clone()).map_or(0, |p| p.images());
    let body = format!(
        r#"<section class=card><h1>Video job <code>{id}</code></h1>
<dl class=kv><dt>state</dt><dd id=state class='state {state}'>{state}</dd><dt>images</dt><dd>{images}</dd><dt>step</dt><dd id=step>waiting for a worker</dd></dl></section>
<section class=card><h2>Progress</h2>
<div class=bar><div id=fill></div></div>
<div class=stats><span id=units>0 of {total} steps</span><span id=pct>0 %</span></div>
<p style="margin-top:14px">{cancel}</p></section>
<section class=card id=resultcard style="display:none"><h2>Video</h2>
<video id=player controls muted playsinline style="width:100%;max-width:720px;background:#000;border-radius:6px"></video>
<dl class=kv style="margin-top:12px"><dt>length</dt><dd id=seconds></dd><dt>frames</dt><dd id=frames></dd><dt>size</dt><dd id=bytes></dd><dt>time</dt><dd id=timing></dd></dl>
<p><a id=download download>download the MP4</a></p></section>
<section class=card id=errorcard style="display:none"><h2>Error</h2><p class=error id=error></p></section>
<script>
const total = {total}, images = {images}; let done = 0;
function step(d) {{
  if (d >= total) return 'done';
  if (d < images) return 'fetching images (' + d + ' of ' + images + ')';
  if (d < 2 * images) return 'fitting images into frames (' + (d - images) + ' of ' + images + ')';
  return 'encoding with ffmpeg';
}}
function show(d) {{
  if (d < done) return; done = Math.min(d, total);
  const pct = total ? done * 100 / total : 0;
  document.getElementById('fill').style.width = pct + '%';
  document.getElementById('units').textContent = done + ' of ' + total + ' steps';
  document.getElementById('pct').textContent = Math.floor(pct) + ' %';
  document.getElementById('step').textContent = step(done);
}}
function setState(s) {{ const e = document.getElementById('state'); e.textContent = s; e.className = 'state ' + s;
  if (['succeeded','failed','cancelled'].includes(s)) {{ const c = document.getElementById('cancel'); if (c) c.remove(); }} }}
function result(r) {{
  show(total); setState('succeeded');
  const p = document.getElementById('player'); p.src = r.video; p.play().catch(() => {{}});
  document.getElementById('download').href = r.video;
  document.getElementById('seconds').textContent = r.seconds.toFixed(2) + ' s at ' + r.width + ' x ' + r.height;
  document.getElementById('frames').textContent = r.frames;
  document.getElementById('bytes').textContent = (r.bytes / 1024).toFixed(1) + ' KiB';
  document.getElementById('timing').textContent = 'fetch ' + r.fetch_ms + ' ms, frames ' + r.normalize_ms + ' ms, ffmpeg ' + r.encode_ms + ' ms';
  document.getElementById('resultcard').style.display = '';
}}
function failed(msg, s) {{ setState(s); document.getElementById('step').textContent = s; document.getElementById('error').textContent = msg; document.getElementById('errorcard').style.display = ''; }}
{events}</script>"#,
        id = escape(&job.id),
        state = job.state.as_str(),
        total = job.progress.total,
        events = crate::pages::job_events_script(&job.id),
    );
    page(&format!("video job {}", escape(&job.id)), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let r = |v: &str| asked_range(Some(v), 1000);
        assert_eq!(asked_range(None, 1000), Asked::Whole);
        assert_eq!(r("bytes=0-99"), Asked::Range(0, 99));
        assert_eq!(r("bytes=900-"), Asked::Range(900, 999));
        assert_eq!(r("bytes=900-5000"), Asked::Range(900, 999));
        assert_eq!(r("bytes=-100"), Asked::Range(900, 999));
        assert_eq!(r("bytes=-5000"), Asked::Range(0, 999));
        assert_eq!(r("bytes=1000-"), Asked::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Asked::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Asked::Whole);
        assert_eq!(r("bytes=5-1"), Asked::Whole);
        assert_eq!(r("items=0-1"), Asked::Whole);
        assert_eq!(r("bytes=x-"), Asked::Whole);
        assert_eq!(r("Bytes=0-1"), Asked::Range(0, 1));
        assert_eq!(r("bytes=+5-"), Asked::Whole);
        assert_eq!(asked_range(Some("bytes=0-"), 0), Asked::Unsatisfiable);
    }
}

//! nimbus's web tier (axum): the REST API under `/api/v1`, the GUI pages, server-sent job
//! events, the OpenAPI document, `/healthz` and Prometheus `/metrics`. The only crate that speaks
//! HTTP to users.

mod api;
mod classify;
mod error;
pub mod events;
mod fleet;
mod metrics;
pub mod openapi;
mod pages;
mod video;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_core::{Engine, Result};
use nimbus_workloads::atoms::Limits;
use nimbus_workloads::jobs::JobStore;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use events::EventHub;

/// How the web tier runs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Bounds on atoms jobs.
    pub limits: Limits,
    /// The largest atom file accepted, in bytes.
    pub upload_limit: usize,
    /// Names this replica's event queue (`events-<replica>`).
    pub replica: String,
    /// The largest image accepted.
    pub max_image_bytes: usize,
    /// The largest classify or upload request (all its images).
    pub max_upload_bytes: usize,
    /// How long a classify request waits for its labels by default.
    pub classify_wait: Duration,
    /// The longest wait a client may ask for.
    pub max_classify_wait: Duration,
    /// Why no worker of this deployment classifies images, where that is known (`nimbus up`
    /// without its model): classify requests then get a 503 saying so instead of waiting in a
    /// queue nothing serves.
    pub classify_off: Option<String>,
    /// This replica's place in a cluster (`nimbus cluster up`, seed 003), answered on its path.
    pub instance: Option<Instance>,
    /// Bounds on video jobs.
    pub video_limits: nimbus_workloads::video::VideoLimits,
}

/// A replica of a cluster: `GET <path>` answers which instance responded, as seed 003's app did,
/// in its body and in the `x-nimbus-instance` header (which `nimbus bench http` counts by).
#[derive(Debug, Clone)]
pub struct Instance {
    /// The cluster's path, such as `/cluster1`.
    pub path: String,
    /// This replica's name, such as `cluster1-2`.
    pub id: String,
}

/// Whether the web tier already serves `path` (a cluster's path must be another).
pub fn serves(path: &str) -> bool {
    const PAGES: [&str; 8] = [
        "/",
        "/healthz",
        "/metrics",
        "/classify",
        "/fleet",
        "/queues",
        "/jobs",
        "/video",
    ];
    let trimmed = path.trim_end_matches('/');
    PAGES.contains(&if trimmed.is_empty() { "/" } else { trimmed })
        || ["/api/", "/jobs/"].iter().any(|p| path.starts_with(p))
        || path == "/api"
}

/// The header a cluster replica names itself in.
pub const INSTANCE_HEADER: &str = "x-nimbus-instance";

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            upload_limit: 64 * 1024 * 1024,
            replica: format!("web-{}", std::process::id()),
            max_image_bytes: 10 * 1024 * 1024,
            max_upload_bytes: 100 * 1024 * 1024,
            classify_wait: Duration::from_secs(30),
            max_classify_wait: Duration::from_secs(120),
            classify_off: None,
            instance: None,
            video_limits: nimbus_workloads::video::VideoLimits::default(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    store: JobStore,
    hub: EventHub,
    metrics: Arc<metrics::Metrics>,
    config: Arc<WebConfig>,
}

impl AppState {
    /// State over `engine`.
    pub fn new(engine: Engine, config: WebConfig) -> Self {
        Self {
            store: JobStore::new(engine),
            hub: EventHub::default(),
            metrics: Arc::default(),
            config: Arc::new(config),
        }
    }

    /// Creates the queues and topic the web tier sends to, starts the watcher of their dead
    /// letters (which fails the jobs behind them) and this replica's event pump (until
    /// `shutdown`; the handle ends once the replica's event queue is removed).
    pub async fn start(&self, shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>> {
        let queues = nimbus_workloads::kinds::web_queues();
        self.store.prepare(&queues).await?;
        let queues = queues
            .into_iter()
            .map(nimbus_core::QueueName::new)
            .collect::<Result<Vec<_>>>()?;
        tokio::spawn(nimbus_workloads::dead_letters::watch(
            self.store.clone(),
            queues,
            shutdown.clone(),
        ));
        events::start_pump(
            self.store.engine().clone(),
            self.hub.clone(),
            &self.config.replica,
            shutdown,
        )
        .await
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let upload_limit = state.config.upload_limit;
    let image_upload_limit = state.config.max_upload_bytes;
    let mut router = Router::new();
    if let Some(instance) = state.config.instance.clone() {
        let path = instance.path.clone();
        router = router.route(&path, get(move || instance_answer(instance.clone())));
    }
    router
        .route("/", get(pages::home))
        .route("/jobs/{id}", get(pages::job_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route(
            "/api/v1/jobs",
            post(api::create_job)
                .layer(DefaultBodyLimit::max(image_upload_limit))
                .get(api::list_jobs),
        )
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/v1/jobs/{id}/events", get(api::job_events))
        .route("/api/v1/jobs/{id}/plane.png", get(api::plane_png))
        .route("/api/v1/jobs/{id}/video", get(video::video_file))
        .route("/video", get(video::video_page))
        .route(
            "/api/v1/atoms",
            post(api::upload_atoms).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/api/v1/classify",
            post(classify::classify).layer(DefaultBodyLimit::max(image_upload_limit)),
        )
        .route(
            "/api/v1/upload",
            post(classify::upload).layer(DefaultBodyLimit::max(image_upload_limit)),
        )
        .route("/classify", get(pages::classify_page))
        .route("/fleet", get(fleet::fleet_page))
        .route("/queues", get(fleet::queues_page))
        .route("/api/v1/fleet", get(fleet::fleet))
        .route("/api/v1/queues", get(fleet::queues))
        .route("/api/v1/queues/{name}/redrive", post(fleet::redrive))
        .fallback(|| async {
            ApiError::not_found("no such page or endpoint; see /api/v1/openapi.json")
        })
        .layer(state.metrics.layer())
        .with_state(state)
}

async fn instance_answer(instance: Instance) -> impl IntoResponse {
    (
        [(INSTANCE_HEADER, instance.id.clone())],
        format!(
            "Instance {} of {} is responding now!\n",
            instance.id, instance.path
        ),
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, nimbus_metrics::CONTENT_TYPE)],
        metrics::render(&state).await,
    )
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

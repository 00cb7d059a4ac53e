//! nimbus's one metrics layer and one Prometheus exposition: the web tier and the load balancer
//! both time their requests with [`RequestMetricsLayer`] (tower), keep their other figures in
//! `prometheus-client` families with [`latency`] histograms on the same buckets, and render them
//! with [`Exposition::render`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The content type of [`Exposition::render`]'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency bucket bounds in seconds, shared by every latency histogram so that the web tier's and
/// the balancer's figures can be compared bucket by bucket.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram on [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Latency histograms by label set `L`.
pub type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

/// An empty [`Latency`] family.
pub fn latency<L: Clone + std::hash::Hash + Eq>() -> Latency<L> {
    Family::new_with_constructor(latency_histogram)
}

/// The metrics a process exposes, registered once at start.
#[derive(Debug, Default)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Adds `metric` under `name` (a counter's name gets `_total` appended).
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// Everything registered, as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a label that cannot be encoded ends the text early.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out.push_str(&format!("# error: {e}\n# EOF\n"));
        }
        out
    }
}

/// The labels of a request's latency: its route (a pattern, never the raw path, so that the
/// number of series stays bounded) and the status answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route pattern (or rule) that served it.
    pub route: String,
    /// The status code answered.
    pub status: u16,
}

/// Names a request's route from its head.
pub type RouteOf = Arc<dyn Fn(&http::request::Parts) -> String + Send + Sync>;

/// Tower layer: times every request into a [`Latency<RouteStatus>`] family, from its arrival
/// until its response head.
#[derive(Clone)]
pub struct RequestMetricsLayer {
    family: Latency<RouteStatus>,
    route_of: RouteOf,
}

impl RequestMetricsLayer {
    /// Records into `family`, naming routes with `route_of`.
    pub fn new(family: Latency<RouteStatus>, route_of: RouteOf) -> Self {
        Self { family, route_of }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            family: self.family.clone(),
            route_of: self.route_of.clone(),
        }
    }
}

/// The service [`RequestMetricsLayer`] makes.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    family: Latency<RouteStatus>,
    route_of: RouteOf,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let route = (self.route_of)(&parts);
        Timed {
            answer: self.inner.call(http::Request::from_parts(parts, body)),
            record: Some((self.family.clone(), route, started)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, timed when it is ready (no allocation per request).
    pub struct Timed<F> {
        #[pin]
        answer: F,
        record: Option<(Latency<RouteStatus>, String, Instant)>,
    }
}

impl<F, R> Future for Timed<F>
where
    F: Future<Output = Result<http::Response<R>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.answer.poll(cx))?;
        if let Some((family, route, started)) = this.record.take() {
            let labels = RouteStatus {
                route,
                status: response.status().as_u16(),
            };
            family
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(flavor = "current_thread")]
    async fn the_layer_times_requests_under_their_route_and_status() {
        let family = latency::<RouteStatus>();
        let mut exposition = Exposition::default();
        exposition.register(
            "test_request_duration_seconds",
            "Time to answer.",
            family.clone(),
        );
        let layer = RequestMetricsLayer::new(family, Arc::new(|p| format!("{} /x", p.method)));
        let mut service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(
                http::Response::builder()
                    .status(404)
                    .body(())
                    .expect("a valid response"),
            )
        }));
        for _ in 0..3 {
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(http::Request::new(()))
                .await
                .expect("answered");
            assert_eq!(response.status(), 404);
        }
        let text = exposition.render();
        assert!(
            text.contains("test_request_duration_seconds_count{route=\"GET /x\",status=\"404\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

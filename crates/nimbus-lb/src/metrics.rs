//! The balancer's figures, named after the metrics ALB reports to CloudWatch (RequestCount,
//! RequestCountPerTarget, TargetResponseTime, HTTPCode_Target_*, HTTPCode_ELB_*,
//! HealthyHostCount, ActiveConnectionCount), on the shared `nimbus-metrics` exposition.

use nimbus_metrics::{
    latency, Counter, EncodeLabelSet, Exposition, Family, Gauge, Latency, RouteStatus,
};

/// A target's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Its group.
    pub group: String,
    /// `HOST:PORT`.
    pub target: String,
}

/// A target's answers by status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetCode {
    /// Its group.
    pub group: String,
    /// `HOST:PORT`.
    pub target: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub code: String,
}

/// A response the balancer made itself, by group (or `-` where no group was chosen).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalancerCode {
    /// The group, or `-`.
    pub group: String,
    /// The status.
    pub status: u16,
}

/// A group's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// The group.
    pub group: String,
}

/// Every figure the balancer keeps.
pub struct LbMetrics {
    /// Requests by rule (or `default`) and status, arrival to response head (the shared layer).
    pub requests: Latency<RouteStatus>,
    /// Target answers by class.
    pub target_responses: Family<TargetCode, Counter>,
    /// Time from sending to a target to its response head.
    pub target_response_time: Latency<TargetLabels>,
    /// Requests the target failed before answering (refused, reset, timed out).
    pub target_failures: Family<TargetLabels, Counter>,
    /// Responses the balancer made itself.
    pub balancer_responses: Family<BalancerCode, Counter>,
    /// Requests sent again to another target.
    pub retries: Family<GroupLabel, Counter>,
    /// Passive ejections.
    pub ejections: Family<TargetLabels, Counter>,
    /// Healthy, not ejected targets per group (set at scrape time).
    pub healthy_hosts: Family<GroupLabel, Gauge>,
    /// Requests in flight per target (set at scrape time).
    pub in_flight: Family<TargetLabels, Gauge>,
    /// Client connections open.
    pub active_connections: Gauge,
    /// Client connections accepted.
    pub connections: Counter,
    /// Configuration reloads by result.
    pub reloads: Family<GroupLabel, Counter>,
    exposition: Exposition,
}

impl Default for LbMetrics {
    fn default() -> Self {
        let m = Self {
            requests: latency(),
            target_responses: Family::default(),
            target_response_time: latency(),
            target_failures: Family::default(),
            balancer_responses: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            healthy_hosts: Family::default(),
            in_flight: Family::default(),
            active_connections: Gauge::default(),
            connections: Counter::default(),
            reloads: Family::default(),
            exposition: Exposition::default(),
        };
        let mut e = Exposition::default();
        e.register(
            "nimbus_lb_request_duration_seconds",
            "Requests by rule and status, from arrival to the response head.",
            m.requests.clone(),
        );
        e.register(
            "nimbus_lb_target_responses",
            "Target answers by status class (HTTPCode_Target_*; their sum per target is RequestCountPerTarget).",
            m.target_responses.clone(),
        );
        e.register(
            "nimbus_lb_target_response_seconds",
            "From sending a request to a target to its response head (TargetResponseTime).",
            m.target_response_time.clone(),
        );
        e.register(
            "nimbus_lb_target_failures",
            "Requests a target failed before answering.",
            m.target_failures.clone(),
        );
        e.register(
            "nimbus_lb_balancer_responses",
            "Responses the balancer made itself (HTTPCode_ELB_*).",
            m.balancer_responses.clone(),
        );
        e.register(
            "nimbus_lb_retries",
            "Requests sent again to another target.",
            m.retries.clone(),
        );
        e.register(
            "nimbus_lb_ejections",
            "Targets ejected for failing requests.",
            m.ejections.clone(),
        );
        e.register(
            "nimbus_lb_healthy_hosts",
            "Healthy targets per group (HealthyHostCount).",
            m.healthy_hosts.clone(),
        );
        e.register(
            "nimbus_lb_target_in_flight",
            "Requests in flight per target.",
            m.in_flight.clone(),
        );
        e.register(
            "nimbus_lb_active_connections",
            "Client connections open (ActiveConnectionCount).",
            m.active_connections.clone(),
        );
        e.register(
            "nimbus_lb_connections",
            "Client connections accepted (NewConnectionCount).",
            m.connections.clone(),
        );
        e.register(
            "nimbus_lb_reloads",
            "Configuration reloads, by result (group label: ok or failed).",
            m.reloads.clone(),
        );
        Self { exposition: e, ..m }
    }
}

/// One target's figures, looked up once (the per-request path allocates no labels).
#[derive(Debug, Clone)]
pub struct TargetMetrics {
    /// Answers by class: 1xx to 5xx.
    answers: [Counter; 5],
    /// TargetResponseTime.
    pub response_time: nimbus_metrics::Histogram,
    /// Failures before an answer.
    pub failures: Counter,
    /// Ejections.
    pub ejections: Counter,
}

impl TargetMetrics {
    /// Counts an answer of `status`.
    pub fn answered(&self, status: u16) {
        if let Some(c) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|i| self.answers.get(i))
        {
            c.inc();
        }
    }
}

impl LbMetrics {
    /// The figures of the target with `labels`.
    pub fn for_target(&self, labels: &TargetLabels) -> TargetMetrics {
        let class = |c: u16| {
            self.target_responses
                .get_or_create(&TargetCode {
                    group: labels.group.clone(),
                    target: labels.target.clone(),
                    code: format!("{c}xx"),
                })
                .clone()
        };
        TargetMetrics {
            answers: [class(1), class(2), class(3), class(4), class(5)],
            response_time: self.target_response_time.get_or_create(labels).clone(),
            failures: self.target_failures.get_or_create(labels).clone(),
            ejections: self.ejections.get_or_create(labels).clone(),
        }
    }

    /// The exposition's text.
    pub fn render(&self) -> String {
        self.exposition.render()
    }
}

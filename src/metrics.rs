//! Prometheus metrics. Every per-request counter is resolved to a handle when a
//! policy is compiled or a backend is created, so the request path only does
//! atomic increments: no label hashing, no allocation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub decision: &'static str,
    /// Rule name; empty for the default denial (no allow rule matched).
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// A method named in the policy, or `other` (bounded cardinality).
    pub method: String,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    pub enforced: &'static str,
    pub shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyInfoLabels {
    pub kind: &'static str,
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

fn upstream_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// All of the gateway's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub authz_decisions: Family<RuleLabels, Counter>,
    pub rpc_calls: Family<MethodLabels, Counter>,
    pub shadow_calls: Family<DecisionLabels, Counter>,
    pub shadow_mismatch: Family<MismatchLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub active_connections: Gauge,
    pub policy_reloads: Family<ReloadLabels, Counter>,
    pub policy_info: Family<PolicyInfoLabels, Gauge>,
    pub upstream_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub audit_events: Counter,
    pub audit_dropped: Counter,
    pub busy_poll_turns: Counter,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub crl_next_update: Family<FileLabels, Gauge>,
    pub crl_stale: Family<FileLabels, Gauge>,
    pub connections_closed: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ipcgate");
        let m = Metrics {
            authz_decisions: Family::default(),
            rpc_calls: Family::default(),
            shadow_calls: Family::default(),
            shadow_mismatch: Family::default(),
            handshakes: Family::default(),
            active_connections: Gauge::default(),
            policy_reloads: Family::default(),
            policy_info: Family::default(),
            upstream_seconds: Family::new_with_constructor(upstream_histogram),
            audit_events: Counter::default(),
            audit_dropped: Counter::default(),
            busy_poll_turns: Counter::default(),
            tls_reloads: Family::default(),
            crl_next_update: Family::default(),
            crl_stale: Family::default(),
            connections_closed: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "authz_decisions",
            "Calls decided by the enforced policy, by decision and rule",
            m.authz_decisions.clone(),
        );
        r.register(
            "rpc_calls",
            "Calls by method (methods named in the policy, else \"other\") and decision",
            m.rpc_calls.clone(),
        );
        r.register(
            "shadow_calls",
            "Calls as the shadow (dry-run) policy would have decided them",
            m.shadow_calls.clone(),
        );
        r.register(
            "shadow_mismatch",
            "Calls where the shadow policy disagrees with the enforced one",
            m.shadow_mismatch.clone(),
        );
        r.register(
            "handshakes",
            "TLS handshakes by result and failure reason",
            m.handshakes.clone(),
        );
        r.register(
            "active_connections",
            "Client connections past the handshake",
            m.active_connections.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by policy kind and result",
            m.policy_reloads.clone(),
        );
        r.register(
            "policy_info",
            "The policy in force (value 1), with its name and content version",
            m.policy_info.clone(),
        );
        r.register(
            "upstream_response_seconds",
            "Time from forwarding a call to the backend's response headers",
            m.upstream_seconds.clone(),
        );
        r.register(
            "audit_events",
            "Audit events written",
            m.audit_events.clone(),
        );
        r.register(
            "busy_poll_turns",
            "Non-blocking event-loop turns client connections asked for while busy polling (runtime.busy_poll)",
            m.busy_poll_turns.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit events dropped because the sink was slow or failing",
            m.audit_dropped.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of certificates, trust bundle and CRLs, by result",
            m.tls_reloads.clone(),
        );
        r.register(
            "crl_next_update_timestamp_seconds",
            "When each configured CRL should be replaced (its nextUpdate)",
            m.crl_next_update.clone(),
        );
        r.register(
            "crl_stale",
            "1 while a CRL is past its nextUpdate",
            m.crl_stale.clone(),
        );
        r.register("connections_closed", "Live connections closed by the gateway, by reason (revoked/untrusted, certificate expired, idle, reset_flood)", m.connections_closed.clone());
        Metrics { registry, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counter handle for a handshake outcome.
    pub fn handshake(&self, result: &'static str, reason: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { result, reason })
            .inc();
    }
}

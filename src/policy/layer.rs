//! The authorization middleware: one policy lookup per request, answered with
//! PERMISSION_DENIED before the call reaches any backend; the shadow policy,
//! metrics and audit trail ride along.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::{Either, Ready};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};
use tracing::warn;

use super::compile::SourceMatch;
use super::Policy;
use crate::audit::{AuditEvent, Auditor, ShadowOutcome};
use crate::grpc::{self, Code};
use crate::identity::Peer;
use crate::metrics::{DecisionLabels, Metrics, MismatchLabels};

/// The policies in force and what they report to. Policies are swapped whole
/// (never edited), and read on every request, so a reload applies to the next
/// call on every live connection.
pub struct Authorizer {
    enforced: ArcSwap<Policy>,
    shadow: ArcSwapOption<Policy>,
    auditor: Option<Auditor>,
    shadow_allow: Counter,
    shadow_deny: Counter,
    /// Enforced allowed, shadow would deny.
    mismatch_allow_deny: Counter,
    /// Enforced denied, shadow would allow.
    mismatch_deny_allow: Counter,
}

impl Authorizer {
    pub fn new(
        enforced: Policy,
        shadow: Option<Policy>,
        auditor: Option<Auditor>,
        metrics: &Metrics,
    ) -> Authorizer {
        let sc = |decision| {
            metrics
                .shadow_calls
                .get_or_create_owned(&DecisionLabels { decision })
        };
        let mm = |enforced, shadow| {
            metrics
                .shadow_mismatch
                .get_or_create_owned(&MismatchLabels { enforced, shadow })
        };
        Authorizer {
            enforced: ArcSwap::from_pointee(enforced),
            shadow: ArcSwapOption::from_pointee(shadow),
            auditor,
            shadow_allow: sc("allow"),
            shadow_deny: sc("deny"),
            mismatch_allow_deny: mm("allow", "deny"),
            mismatch_deny_allow: mm("deny", "allow"),
        }
    }

    pub fn enforced(&self) -> Arc<Policy> {
        self.enforced.load_full()
    }

    pub fn shadow(&self) -> Option<Arc<Policy>> {
        self.shadow.load_full()
    }

    pub fn set_enforced(&self, p: Policy) {
        self.enforced.store(Arc::new(p));
    }

    pub fn set_shadow(&self, p: Option<Policy>) {
        self.shadow.store(p.map(Arc::new));
    }

    pub fn auditor(&self) -> Option<&Auditor> {
        self.auditor.as_ref()
    }

    /// Decides one call: enforced policy (counted), shadow policy (counted,
    /// never enforced), audit event if the policy asks for one.
    fn decide(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: &Arc<Peer>,
        memo: &mut ConnMemo,
    ) -> Result<(), String> {
        let policy = self.enforced.load();
        let d = memo.enforced.with(&policy, peer, |src| {
            policy.authorize(path, headers, peer, src)
        });
        let allowed = d.allowed();
        let shadow_guard = self.shadow.load();
        let shadow = shadow_guard.as_ref().map(|s| {
            let sd = memo
                .shadow
                .with(s, peer, |src| s.evaluate_for(path, headers, peer, src));
            let s_allowed = sd.allowed();
            if s_allowed {
                &self.shadow_allow
            } else {
                &self.shadow_deny
            }
            .inc();
            match (allowed, s_allowed) {
                (true, false) => self.mismatch_allow_deny.inc(),
                (false, true) => self.mismatch_deny_allow.inc(),
                _ => 0,
            };
            (s, sd.rule_name(), s_allowed)
        });
        let differs = shadow.as_ref().is_some_and(|(_, _, s)| *s != allowed);
        if let Some(auditor) = &self.auditor {
            // A shadow disagreement is always worth a line: it is what a dry run
            // is for.
            if policy.audit.any_logger() && (policy.audit.condition.applies(allowed) || differs) {
                auditor.submit(AuditEvent {
                    time: SystemTime::now(),
                    method: path.to_owned(),
                    peer: peer.clone(),
                    policy: policy.clone(),
                    rule: d.rule_name(),
                    authorized: allowed,
                    shadow: shadow.as_ref().map(|(s, r, a)| ShadowOutcome {
                        policy: (*s).clone(),
                        rule: r.clone(),
                        authorized: *a,
                    }),
                    stdout: policy.audit.stdout,
                    file: policy.audit.file,
                });
            }
        }
        if allowed {
            return Ok(());
        }
        let rule = d.rule();
        warn!(
            target: "ipcgate::authz",
            method = path,
            client.id = peer.principal(),
            client.sha256 = %peer.sha256_hex(),
            peer.uid = peer.cred.as_ref().and_then(|c| c.uid),
            peer.pid = peer.cred.as_ref().and_then(|c| c.pid),
            authz.rule = rule.unwrap_or("(no allow rule matched)"),
            policy.name = %policy.name,
            policy.version = %policy.version,
            "request denied"
        );
        Err(match rule {
            Some(r) => format!("denied by rule {r:?} of policy {:?}", policy.name),
            None => format!("no rule of policy {:?} allows this call", policy.name),
        })
    }
}

/// Which rule sources match this connection's peer, and the decisions it has
/// had, remembered per policy: the peer never changes on a connection, so only a
/// policy swap starts afresh.
#[derive(Default)]
struct SourceMemo {
    cell: Option<Memo>,
}

struct Memo {
    policy: Arc<Policy>,
    src: SourceMatch,
}

impl SourceMemo {
    fn with<R>(
        &mut self,
        policy: &Arc<Policy>,
        peer: &Peer,
        f: impl FnOnce(&mut SourceMatch) -> R,
    ) -> R {
        let m = match &mut self.cell {
            Some(m) if Arc::ptr_eq(&m.policy, policy) => m,
            cell => cell.insert(Memo {
                policy: policy.clone(),
                src: policy.source_match(peer),
            }),
        };
        f(&mut m.src)
    }
}

/// Owned by the connection's service: calls on one connection are decided one
/// at a time, in its task.
#[derive(Default)]
struct ConnMemo {
    enforced: SourceMemo,
    shadow: SourceMemo,
}

/// Enforces the current policy for one connection's peer.
#[derive(Clone)]
pub struct AuthzLayer {
    authz: Arc<Authorizer>,
    peer: Arc<Peer>,
}

impl AuthzLayer {
    /// One layer per connection: it holds the connection's peer and memo.
    pub fn new(authz: Arc<Authorizer>, peer: Arc<Peer>) -> Self {
        AuthzLayer { authz, peer }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            authz: self.authz.clone(),
            peer: self.peer.clone(),
            memo: ConnMemo::default(),
        }
    }
}

pub struct Authz<S> {
    inner: S,
    authz: Arc<Authorizer>,
    peer: Arc<Peer>,
    memo: ConnMemo,
}

impl<S, B> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<grpc::Body>>,
{
    type Response = Response<grpc::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self
            .authz
            .decide(req.uri().path(), req.headers(), &self.peer, &mut self.memo)
        {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(msg) => Either::Left(futures_util::future::ready(Ok(grpc::status(
                Code::PermissionDenied,
                &msg,
            )))),
        }
    }
}

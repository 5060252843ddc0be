//! The authorization middleware: one policy lookup per request, answered with
//! PERMISSION_DENIED before the call reaches any backend.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};
use tracing::warn;

use super::{Decision, PolicyHandle};
use crate::grpc::{self, Code};
use crate::identity::Peer;

/// Enforces the current policy for one connection's peer. The policy is read on
/// every request (never cached per connection), so a reload applies to the next
/// call on every live connection.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: PolicyHandle,
    peer: Arc<Peer>,
}

impl AuthzLayer {
    pub fn new(policy: PolicyHandle, peer: Arc<Peer>) -> Self {
        AuthzLayer { policy, peer }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policy: self.policy.clone(),
            peer: self.peer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    policy: PolicyHandle,
    peer: Arc<Peer>,
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
        let policy = self.policy.load();
        match policy.evaluate(req.uri().path(), req.headers(), &self.peer) {
            Decision::Allow { .. } => Either::Right(self.inner.call(req)),
            Decision::Deny { rule } => {
                let peer = &self.peer;
                warn!(
                    target: "ipcgate::authz",
                    method = req.uri().path(),
                    client.id = peer.principal(),
                    client.sha256 = %peer.sha256_hex(),
                    peer.uid = peer.cred.map(|c| c.uid),
                    peer.pid = peer.cred.and_then(|c| c.pid),
                    authz.rule = rule.unwrap_or("(no allow rule matched)"),
                    policy.name = %policy.name,
                    policy.version = %policy.version,
                    "request denied"
                );
                let msg = match rule {
                    Some(r) => format!("denied by rule {r:?} of policy {:?}", policy.name),
                    None => format!("no rule of policy {:?} allows this call", policy.name),
                };
                Either::Left(futures_util::future::ready(Ok(grpc::status(
                    Code::PermissionDenied,
                    &msg,
                ))))
            }
        }
    }
}

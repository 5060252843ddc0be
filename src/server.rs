//! The gateway: accept → handshake → identity → serve HTTP/2 through the tower
//! stack (path check → authorization → proxy).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, Limits};
use crate::identity::{Peer, PeerCred};
use crate::listen::{ListenError, Uds};
use crate::path::PathCheckLayer;
use crate::policy::{AuthzLayer, Policy, PolicyError, PolicyHandle};
use crate::proxy::Proxy;
use crate::route::Router;
use crate::tls::{self, ServerTls, TlsError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Everything a connection needs, shared by all of them.
struct Shared {
    acceptor: TlsAcceptor,
    by: Option<String>,
    policy: PolicyHandle,
    router: Arc<Router>,
    limits: Limits,
}

/// A bound, ready gateway. [`Gateway::bind`] does all the checking (config,
/// certificates, policy, socket) so that a broken setup fails at start-up.
pub struct Gateway {
    listener: Uds,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Loads certificates and policy and binds the socket.
    ///
    /// # Errors
    /// [`GatewayError`] naming the file and what to fix.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        let ServerTls {
            config: tls_config,
            by,
        } = tls::server(&config.tls)?;
        let policy = Policy::load(&config.policy.file)?;
        let (deny, allow) = policy.rule_counts();
        info!(policy.name = %policy.name, policy.version = %policy.version, deny, allow, "policy loaded");
        let router = Arc::new(Router::new(&config.routes, &config.limits));
        let listener = Uds::bind(&config.listen.uds, config.listen.mode, config.listen.group)?;
        Ok(Gateway {
            listener,
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(tls_config),
                by,
                policy: Arc::new(ArcSwap::from_pointee(policy)),
                router,
                limits: config.limits,
            }),
        })
    }

    pub fn socket_path(&self) -> &Path {
        self.listener.path()
    }

    /// The policy in force; storing a new one applies it to the next call on every
    /// connection.
    pub fn policy(&self) -> PolicyHandle {
        self.shared.policy.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// calls finish within the drain timeout, and removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.shared.limits.max_connections,
        ));
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, cred)) => {
                        let shared = self.shared.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            serve_connection(shared, stream, cred, watcher).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors or similar: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        info!("shutting down: no new connections, draining calls in flight");
        drop(self.listener);
        let drain = self.shared.limits.drain_timeout;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(
                ?drain,
                "drain timeout passed with calls still in flight; closing them"
            );
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: UnixStream,
    cred: Option<PeerCred>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let uid = cred.map(|c| c.uid);
    let pid = cred.and_then(|c| c.pid);
    let tls = match tokio::time::timeout(
        shared.limits.handshake_timeout,
        shared.acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
        Err(_) => {
            warn!(target: "ipcgate::tls", reason = "timeout", peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(b"h2") {
        warn!(target: "ipcgate::tls", reason = "client did not negotiate ALPN h2", peer.uid = uid, peer.pid = pid, "handshake failed");
        return;
    }
    let peer = match Peer::new(
        conn.peer_certificates().unwrap_or(&[]),
        cred,
        shared.by.as_deref(),
    ) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
    };
    debug!(
        client.id = peer.principal(),
        peer.uid = uid,
        peer.pid = pid,
        "connection established"
    );

    let svc = ServiceBuilder::new()
        .layer(PathCheckLayer)
        .layer(AuthzLayer::new(shared.policy.clone(), peer.clone()))
        .service(Proxy::new(shared.router.clone(), peer.clone()));
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(shared.limits.max_concurrent_streams)
        .max_header_list_size(shared.limits.max_header_list_size)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
    if let Err(e) = watcher.watch(conn).await {
        debug!(client.id = peer.principal(), error = %e, "connection ended with an error");
    }
}

//! The gateway: accept → handshake → identity → serve HTTP/2 through the tower
//! stack (path check → authorization → proxy); beside it the reload triggers and
//! the admin socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tracing::{debug, info, warn};

use crate::audit::Auditor;
use crate::config::{Config, ConfigError, Limits};
use crate::conns::Conns;
use crate::identity::{Peer, PeerCred};
use crate::listen::{ListenError, Uds};
use crate::metrics::{Metrics, ReasonLabels};
use crate::path::PathCheckLayer;
use crate::policy::{Authorizer, AuthzLayer, PolicyError};
use crate::proxy::Proxy;
use crate::reload::{PolicySource, Reloader, TlsSource};
use crate::route::Router;
use crate::tls::TlsError;

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
    #[error("{path}: cannot open the audit file: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
}

/// Everything a connection needs, shared by all of them.
struct Shared {
    tls: Arc<TlsSource>,
    authz: Arc<Authorizer>,
    router: Arc<Router>,
    limits: Limits,
    metrics: Arc<Metrics>,
    conns: Arc<Conns>,
    repair_authority: bool,
    /// Becomes true when the gateway starts shutting down.
    stopping: watch::Receiver<bool>,
}

/// A bound, ready gateway. [`Gateway::bind`] does all the checking (config,
/// certificates, policy, socket) so that a broken setup fails at start-up.
pub struct Gateway {
    listener: Uds,
    admin: Option<Uds>,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    watch: bool,
    stop: watch::Sender<bool>,
}

impl Gateway {
    /// Loads certificates and policies, opens the audit file, binds the sockets.
    ///
    /// # Errors
    /// [`GatewayError`] naming the file and what to fix.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        Self::bind_with(config, Vec::new()).await
    }

    /// [`Gateway::bind`] with the sockets systemd passed in
    /// ([`crate::systemd::take_listeners`]), used when `[listen] systemd` names one.
    ///
    /// # Errors
    /// [`GatewayError`] naming the file and what to fix.
    pub async fn bind_with(
        config: Config,
        mut inherited: Vec<(String, std::os::unix::net::UnixListener)>,
    ) -> Result<Gateway, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let conns = Arc::new(Conns::default());
        let tls = Arc::new(TlsSource::load(
            config.tls.clone(),
            conns.clone(),
            metrics.clone(),
        )?);
        let source = Arc::new(PolicySource::new(
            config.policy.clone(),
            config.audit.file.is_some(),
            metrics.clone(),
        ));
        let (enforced, shadow) = source.load()?;
        let (deny, allow) = enforced.rule_counts();
        info!(policy.name = %enforced.name, policy.version = %enforced.version, deny, allow, "policy loaded");
        if let Some(s) = &shadow {
            info!(policy.name = %s.name, policy.version = %s.version, "shadow policy loaded (evaluated, never enforced)");
        }
        let auditor = Auditor::start(
            config.audit.file.as_deref(),
            config.audit.queue,
            metrics.audit_events.clone(),
            metrics.audit_dropped.clone(),
        )
        .map_err(|e| GatewayError::Audit {
            path: config
                .audit
                .file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source: e,
        })?;
        let authz = Arc::new(Authorizer::new(enforced, shadow, Some(auditor), &metrics));
        let router = Arc::new(Router::new(&config.routes, &config.limits, &metrics));
        let listener = match &config.listen.systemd {
            None => Uds::bind(&config.listen.uds, config.listen.mode, config.listen.group)?,
            Some(name) => {
                let pos = inherited.iter().position(|(n, _)| n == name).ok_or_else(|| {
                    ListenError::Io {
                        path: config.source.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "listen.systemd = {name:?}, but systemd passed no socket of that name (have: {:?}; set FileDescriptorName={name} in the .socket unit)",
                                inherited.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
                            ),
                        ),
                    }
                })?;
                let (n, l) = inherited.swap_remove(pos);
                Uds::from_systemd(&n, l)?
            }
        };
        let admin = match &config.admin {
            Some(a) => Some(Uds::bind(&a.uds, a.mode, None)?),
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let reloader = Arc::new(Reloader {
            policy: source,
            tls: tls.clone(),
            authz: authz.clone(),
        });
        Ok(Gateway {
            listener,
            admin,
            shared: Arc::new(Shared {
                tls,
                authz,
                router,
                limits: config.limits,
                metrics,
                conns,
                stopping,
                repair_authority: config.listen.repair_authority,
            }),
            reloader,
            watch: config.policy.watch,
            stop,
        })
    }

    pub fn socket_path(&self) -> &Path {
        self.listener.path()
    }

    /// The policies in force; swapping one applies it to the next call on every
    /// connection.
    pub fn authorizer(&self) -> Arc<Authorizer> {
        self.shared.authz.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Reload policies and TLS material now (what SIGHUP does).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, sends GOAWAY on
    /// every connection, lets in-flight calls finish within the drain timeout,
    /// and removes the sockets.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let reloader = tokio::spawn(crate::reload::run(self.reloader.clone(), self.watch));
        let admin = self.admin.map(|uds| {
            tokio::spawn(crate::admin::serve(
                uds,
                Arc::new(crate::admin::Admin {
                    metrics: self.shared.metrics.clone(),
                    reloader: self.reloader.clone(),
                }),
            ))
        });
        let max = self.shared.limits.max_connections;
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        tokio::pin!(shutdown);
        crate::systemd::notify("READY=1");
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
                        tokio::spawn(async move {
                            serve_connection(shared, stream, cred).await;
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
        crate::systemd::notify("STOPPING=1");
        drop(self.listener);
        reloader.abort();
        let _ = self.stop.send(true);
        let drain = self.shared.limits.drain_timeout;
        // Every connection holds a slot until it is gone.
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!(
                ?drain,
                "drain timeout passed with calls still in flight; closing them"
            );
        }
        if let Some(a) = admin {
            a.abort();
        }
    }
}

/// Longest single timer; longer waits are re-armed.
const LONG_TIMER: Duration = Duration::from_secs(7 * 86_400);

/// A bounded label for why a handshake failed.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_purpose"
            }
            CertificateError::BadSignature => "bad_signature",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "crl_expired",
            CertificateError::UnknownRevocationStatus => "revocation_unknown",
            _ => "invalid_certificate",
        },
        Some(Error::PeerIncompatible(_)) => "incompatible",
        Some(Error::NoApplicationProtocol) => "no_alpn",
        Some(Error::AlertReceived(_)) => "alert_received",
        Some(_) => "tls_error",
        None => "io",
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: UnixStream, cred: Option<PeerCred>) {
    let uid = cred.map(|c| c.uid);
    let pid = cred.and_then(|c| c.pid);
    let m = &shared.metrics;
    // The TLS material of this moment: a reload mid-handshake does not disturb it.
    let tls_state = shared.tls.current();
    let acceptor = TlsAcceptor::from(tls_state.config.clone());
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            m.handshake("failed", failure_reason(&e));
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
        Err(_) => {
            m.handshake("failed", "timeout");
            warn!(target: "ipcgate::tls", reason = "timeout", peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(b"h2") {
        m.handshake("failed", "no_alpn");
        warn!(target: "ipcgate::tls", reason = "client did not negotiate ALPN h2", peer.uid = uid, peer.pid = pid, "handshake failed");
        return;
    }
    let chain = conn.peer_certificates().unwrap_or(&[]);
    let peer = match Peer::new(chain, cred, tls_state.by.as_deref()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            m.handshake("failed", "unreadable_certificate");
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, "handshake failed");
            return;
        }
    };
    let registration = shared.conns.register(chain, peer.principal());
    drop(tls_state);
    m.handshake("ok", "");
    m.active_connections.inc();
    debug!(
        client.id = peer.principal(),
        peer.uid = uid,
        peer.pid = pid,
        "connection established"
    );

    let svc = ServiceBuilder::new()
        .layer(PathCheckLayer)
        .layer(AuthzLayer::new(shared.authz.clone(), peer.clone()))
        .service(Proxy::new(shared.router.clone(), peer.clone()));
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(shared.limits.max_concurrent_streams)
        .max_header_list_size(shared.limits.max_header_list_size)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let io = crate::authority::MaybeRepaired::new(tls, shared.repair_authority);
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);

    // The connection must not outlive its certificate. Timers are kept short
    // (tokio caps long sleeps) and re-armed until notAfter.
    let until_expiry = || {
        peer.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    let expiry = tokio::time::sleep(until_expiry().min(LONG_TIMER));
    tokio::pin!(expiry);
    let mut stopping = shared.stopping.clone();
    let drain = tokio::time::sleep(LONG_TIMER);
    tokio::pin!(drain);
    let mut closing = false;
    loop {
        let why = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(client.id = peer.principal(), error = %e, "connection ended with an error");
                }
                break;
            }
            () = registration.close.notified(), if !closing => "revoked",
            () = &mut expiry, if !closing => {
                let left = until_expiry();
                if !left.is_zero() {
                    expiry.as_mut().reset(tokio::time::Instant::now() + left.min(LONG_TIMER));
                    continue;
                }
                "expired"
            }
            Ok(()) = stopping.changed(), if !closing => "shutdown",
            () = &mut drain, if closing => {
                warn!(client.id = peer.principal(), "calls still in flight after the drain bound: closing the connection");
                break;
            }
        };
        // GOAWAY: no new calls; calls in flight may finish within the bound.
        closing = true;
        conn.as_mut().graceful_shutdown();
        drain
            .as_mut()
            .reset(tokio::time::Instant::now() + shared.limits.drain_timeout);
        if why == "expired" {
            info!(target: "ipcgate::tls", reason = "expired", client.id = peer.principal(), "closing connection: client certificate expired");
            m.connections_closed
                .get_or_create(&ReasonLabels { reason: "expired" })
                .inc();
        }
    }
    m.active_connections.dec();
}

//! The gateway: accept → handshake → identity → relay HTTP/2 (`crate::relay`),
//! each call's head decided by the tower stack (path check → authorization →
//! route); beside it the reload triggers and the admin socket.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tracing::{debug, info, warn};

use crate::audit::Auditor;
use crate::config::{Config, ConfigError, Limits, ListenAt};
use crate::conns::{Activity, Conns};
use crate::http2;
use crate::identity::Peer;
use crate::listen::{Accepted, ListenError, Listener, Tcp};
use crate::metrics::{Metrics, ReasonLabels};
use crate::path::PathCheckLayer;
use crate::policy::{Authorizer, AuthzLayer, PolicyError};
use crate::proxy::Route;
use crate::relay::{self, Decision, Relay};
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
    /// `runtime.busy_poll`: each client connection's longest spin.
    busy_poll: Duration,
    metrics: Arc<Metrics>,
    conns: Arc<Conns>,
    /// Becomes true when the gateway starts shutting down.
    stopping: watch::Receiver<bool>,
}

/// A bound, ready gateway. [`Gateway::bind`] does all the checking (config,
/// certificates, policy, socket) so that a broken setup fails at start-up.
pub struct Gateway {
    /// Each listener with its `repair_authority` setting.
    listeners: Vec<(Listener, bool)>,
    admin: Option<Listener>,
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
        mut inherited: Vec<(String, crate::systemd::Inherited)>,
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
        let mut listeners = Vec::with_capacity(config.listen.len());
        for l in &config.listen {
            listeners.push((
                bind_listener(l, &mut inherited, &config.source)?,
                l.repair_authority,
            ));
        }
        // Config::parse lets the admin endpoint be a Unix socket or a pipe only.
        let admin = match &config.admin {
            Some(a) => Some(bind_listener(a, &mut inherited, &config.source)?),
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let reloader = Arc::new(Reloader {
            policy: source,
            tls: tls.clone(),
            authz: authz.clone(),
        });
        Ok(Gateway {
            listeners,
            admin,
            shared: Arc::new(Shared {
                tls,
                authz,
                router,
                limits: config.limits,
                busy_poll: config.busy_poll,
                metrics,
                conns,
                stopping,
            }),
            reloader,
            watch: config.policy.watch,
            stop,
        })
    }

    /// The first Unix socket the gateway listens on (empty if none).
    pub fn socket_path(&self) -> &Path {
        self.listeners
            .iter()
            .find_map(|(l, _)| match l {
                #[cfg(unix)]
                Listener::Uds(u) => Some(u.path()),
                _ => None,
            })
            .unwrap_or(Path::new(""))
    }

    /// Every address the gateway listens on, TCP ports resolved.
    pub fn local_addrs(&self) -> Vec<ListenAt> {
        self.listeners.iter().map(|(l, _)| l.local()).collect()
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
        // A pool of connection slots per listener: peers on one listener (say,
        // unauthenticated TCP clients stalling their handshakes) cannot take the
        // slots of another (the local Unix socket).
        let mut pools = Vec::with_capacity(self.listeners.len());
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, repair) in self.listeners {
            let slots = Arc::new(tokio::sync::Semaphore::new(max));
            pools.push(slots.clone());
            accepting.spawn(accept_loop(listener, repair, self.shared.clone(), slots));
        }
        crate::systemd::notify("READY=1");
        shutdown.await;
        info!("shutting down: no new connections, draining calls in flight");
        crate::systemd::notify("STOPPING=1");
        reloader.abort();
        // Accept loops end (dropping their sockets) and every connection sends GOAWAY.
        let _ = self.stop.send(true);
        while accepting.join_next().await.is_some() {}
        let drain = self.shared.limits.drain_timeout;
        // Every connection holds a slot of its listener's pool until it is gone.
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let drained = async {
            for slots in &pools {
                let _ = slots.acquire_many(all).await;
            }
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            warn!(
                ?drain,
                "drain timeout passed with calls still in flight; closing them"
            );
        }
        if let Some(a) = admin {
            a.abort();
        }
        // The audit writer is a detached thread: the process must not exit
        // before it has written the last calls' events.
        let authz = self.shared.authz.clone();
        let written = tokio::task::spawn_blocking(move || {
            authz.auditor().is_none_or(|a| a.flush(AUDIT_FLUSH))
        })
        .await
        .unwrap_or(false);
        if !written {
            warn!(within = ?AUDIT_FLUSH, "audit events still queued at exit were not all written");
        }
    }
}

/// How long a shutdown waits for the audit writer.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// Binds one configured listener (or takes it from systemd's sockets).
// Without systemd (Windows) nothing is taken out of `inherited`.
#[cfg_attr(not(unix), allow(unused_variables, clippy::ptr_arg))]
fn bind_listener(
    l: &crate::config::Listen,
    inherited: &mut Vec<(String, crate::systemd::Inherited)>,
    source: &Path,
) -> Result<Listener, ListenError> {
    Ok(match &l.at {
        #[cfg(unix)]
        ListenAt::Uds(path) => Listener::Uds(crate::listen::Uds::bind(path, l.mode, l.group)?),
        #[cfg(unix)]
        ListenAt::Systemd(name) => {
            let pos = inherited.iter().position(|(n, _)| n == name).ok_or_else(|| {
                ListenError::Io {
                    path: source.to_owned(),
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
            Listener::Uds(crate::listen::Uds::from_systemd(&n, l)?)
        }
        ListenAt::Tcp(addr) => Listener::Tcp(Tcp::bind(*addr)?),
        #[cfg(windows)]
        ListenAt::Pipe(name) => Listener::Pipe(crate::listen::Pipe::bind(name, l.sddl.as_deref())?),
        // Refused by Config::parse on this platform.
        #[allow(unreachable_patterns)]
        other => {
            return Err(ListenError::Io {
                path: source.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    format!("{other}: not supported on this platform"),
                ),
            })
        }
    })
}

/// Accepts on one listener until the gateway stops; each connection holds a
/// slot of the shared `max_connections` pool for its lifetime.
async fn accept_loop(
    mut listener: Listener,
    repair_authority: bool,
    shared: Arc<Shared>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    let mut stopping = shared.stopping.clone();
    loop {
        let slot = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(a) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_connection(shared, a, repair_authority).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                warn!(listener = %listener.local(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
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
            c if crate::tls::is_path_len(c) => "path_len",
            c if crate::tls::is_anchor_expired(c) => "ca_expired",
            _ => "invalid_certificate",
        },
        Some(Error::PeerIncompatible(_)) => "incompatible",
        Some(Error::NoApplicationProtocol) => "no_alpn",
        Some(Error::AlertReceived(_)) => "alert_received",
        Some(_) => "tls_error",
        None => "io",
    }
}

async fn serve_connection(shared: Arc<Shared>, accepted: Accepted, repair_authority: bool) {
    let Accepted {
        conn: stream,
        cred,
        remote,
    } = accepted;
    let uid = cred.as_ref().and_then(|c| c.uid);
    let pid = cred.as_ref().and_then(|c| c.pid);
    let remote = remote.map(tracing::field::display);
    let m = &shared.metrics;
    // The TLS material of this moment: a reload mid-handshake does not disturb it.
    let tls_state = shared.tls.current();
    let acceptor = TlsAcceptor::from(tls_state.config.clone());
    // One budget for TLS and the HTTP/2 preface together.
    let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
    let mut tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            m.handshake("failed", failure_reason(&e));
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, peer.addr = remote, "handshake failed");
            return;
        }
        Err(_) => {
            m.handshake("failed", "timeout");
            warn!(target: "ipcgate::tls", reason = "timeout", peer.uid = uid, peer.pid = pid, peer.addr = remote, "handshake failed");
            return;
        }
    };
    crate::tls::limit_send(tls.get_mut().1);
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(b"h2") {
        m.handshake("failed", "no_alpn");
        warn!(target: "ipcgate::tls", reason = "client did not negotiate ALPN h2", peer.uid = uid, peer.pid = pid, peer.addr = remote, "handshake failed");
        return;
    }
    let chain = conn.peer_certificates().unwrap_or(&[]);
    let peer = match Peer::new(chain, cred, tls_state.by.as_deref()) {
        Ok(mut p) => {
            if let Some(t) = crate::tls::chain_not_after(chain, &tls_state.anchors) {
                p.not_after = p.not_after.min(t);
            }
            Arc::new(p)
        }
        Err(e) => {
            let reason = match e {
                crate::identity::IdentityError::SpiffeIds(_) => "spiffe_ids",
                _ => "unreadable_certificate",
            };
            m.handshake("failed", reason);
            warn!(target: "ipcgate::tls", reason = %e, peer.uid = uid, peer.pid = pid, peer.addr = remote, "handshake failed");
            return;
        }
    };
    let registration = shared.conns.register(chain, peer.principal());
    // A reload that swapped the material in after this handshake began may
    // have re-checked the live connections before this one registered: then
    // it verifies itself against what is in force now (see
    // `TlsSource::reload`), so a certificate revoked mid-handshake is not let
    // in on the old CRL.
    // The same when a CRL went stale since (`crl_expired = "deny"`): the
    // periodic check's re-check may have run before this registered.
    let now_tls = shared.tls.current();
    let stale = || {
        let now = SystemTime::now();
        shared.tls.crl_expired_deny() && now_tls.crls.iter().any(|c| c.is_stale(now))
    };
    if !Arc::ptr_eq(&now_tls, &tls_state) || stale() {
        let now = rustls::pki_types::UnixTime::now();
        if let Err(e) = crate::conns::verifies(&*now_tls.verifier, chain, now) {
            m.handshake("failed", "no_longer_verifies");
            warn!(target: "ipcgate::tls", reason = %e, client.id = peer.principal(), peer.uid = uid, peer.pid = pid, peer.addr = remote, "handshake failed: the client certificate does not verify against the TLS material reloaded meanwhile");
            return;
        }
    }
    drop((now_tls, tls_state));
    m.handshake("ok", "");
    m.active_connections.inc();
    debug!(
        client.id = peer.principal(),
        peer.uid = uid,
        peer.pid = pid,
        peer.addr = remote,
        "connection established"
    );
    let activity = Arc::new(Activity::default());

    let svc = ServiceBuilder::new()
        .layer(PathCheckLayer)
        .layer(AuthzLayer::new(shared.authz.clone(), peer.clone()))
        .service(Route::new(shared.router.clone(), &peer));
    // The HTTP/2 preface is inside the handshake budget: a client that finished
    // TLS and then says nothing is dropped like one that never finished it.
    match tokio::time::timeout_at(deadline, relay::read_preface(&mut tls)).await {
        Ok(Ok(())) => {}
        failed => {
            match failed {
                Ok(Err(e)) => {
                    debug!(client.id = peer.principal(), error = %e, "HTTP/2 handshake failed");
                }
                _ => debug!(client.id = peer.principal(), "no HTTP/2 preface in time"),
            }
            m.active_connections.dec();
            return;
        }
    }
    let host = GatewayHost {
        svc,
        router: shared.router.clone(),
        activity: activity.clone(),
        floods: ClientFloods {
            conns: shared.conns.clone(),
            peer: peer.clone(),
            metrics: shared.metrics.clone(),
        },
    };
    let opts = relay::Options {
        repair_authority,
        ..relay::Options::new(&shared.limits)
    };
    let mut conn = Relay::new(tls, host, opts);
    let mut busy = crate::busy_poll::BusyPoll::new(shared.busy_poll);

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
    // Idle: no call forwarded and none in flight for `idle_timeout`, checked in
    // quarters so the close comes within 1-1.25x the timeout without a clock
    // read per call.
    let idle_timeout = shared.limits.idle_timeout;
    let quarter = (idle_timeout / 4).max(Duration::from_millis(1));
    let mut idle_tick = tokio::time::interval_at(tokio::time::Instant::now() + quarter, quarter);
    idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet) = (0u64, 0u8);
    let mut closing = false;
    // Revoked or expired: no new call at all, whatever close began before.
    let mut refused = false;
    // The signals below are polled only when one of them woke the task
    // (see `gate`): not at every wake of the relay.
    let gate = crate::gate::Gate::default();
    loop {
        let close = registration.close.notified();
        let changed = stopping.changed();
        tokio::pin!(close, changed);
        let mut changed_gone = false;
        gate.open();
        let signal = tokio::select! {
            // In this order: a revocation or expiry is acted on before the
            // connection reads another batch of calls.
            biased;
            s = std::future::poll_fn(|cx| gate.poll(cx, |cx| {
                if !refused {
                    if close.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::Revoked);
                    }
                    if expiry.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::Expiry);
                    }
                }
                if !closing && !changed_gone {
                    match changed.as_mut().poll(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Signal::Shutdown),
                        // The sender is gone: nothing more will come.
                        Poll::Ready(Err(_)) => changed_gone = true,
                        Poll::Pending => {}
                    }
                }
                if !closing && !idle_timeout.is_zero() && idle_tick.poll_tick(cx).is_ready() {
                    return Poll::Ready(Signal::IdleTick);
                }
                if closing && drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Signal::Drain);
                }
                Poll::Pending
            })) => s,
            r = std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut conn).poll(cx);
                if r.is_pending() && busy.pending(conn.take_moved(), conn.calls() > 0, cx) {
                    shared.metrics.busy_poll_turns.inc();
                }
                r
            }) => {
                if let Err(e) = r {
                    debug!(client.id = peer.principal(), error = %e, "connection ended with an error");
                }
                break;
            }
        };
        let why = match signal {
            Signal::Revoked => "revoked",
            Signal::Expiry => {
                let left = until_expiry();
                if !left.is_zero() {
                    expiry
                        .as_mut()
                        .reset(tokio::time::Instant::now() + left.min(LONG_TIMER));
                    continue;
                }
                "expired"
            }
            Signal::Shutdown => "shutdown",
            Signal::IdleTick => {
                let started = activity.started.load(Ordering::Relaxed);
                if started != seen || activity.in_flight.load(Ordering::Relaxed) > 0 {
                    (seen, quiet) = (started, 0);
                    continue;
                }
                quiet += 1;
                if quiet < 4 {
                    continue;
                }
                "idle"
            }
            Signal::Drain => {
                warn!(
                    client.id = peer.principal(),
                    "calls still in flight after the drain bound: closing the connection"
                );
                break;
            }
        };
        // GOAWAY: no new calls; calls in flight may finish within the bound.
        // A revoked or expired certificate gets no new call at all; a shutdown
        // or idle close takes those that crossed the GOAWAY.
        let hard = matches!(why, "revoked" | "expired");
        refused |= hard;
        conn.graceful_shutdown(if hard {
            Duration::ZERO
        } else {
            http2::SHUTDOWN_GRACE
        });
        if !closing {
            closing = true;
            drain
                .as_mut()
                .reset(tokio::time::Instant::now() + shared.limits.drain_timeout);
        }
        match why {
            "expired" => {
                info!(target: "ipcgate::tls", reason = "expired", client.id = peer.principal(), "closing connection: client certificate expired");
            }
            "idle" => {
                debug!(
                    client.id = peer.principal(),
                    ?idle_timeout,
                    "closing idle connection"
                );
            }
            _ => continue,
        }
        // A connection already told to go away for a flood was counted then.
        if !conn.reset_flood() {
            m.connections_closed
                .get_or_create(&ReasonLabels { reason: why })
                .inc();
        }
    }
    m.active_connections.dec();
}

/// What the relay asks of the gateway for one client connection.
struct GatewayHost<S> {
    /// Path check → authorization → route.
    svc: S,
    router: Arc<Router>,
    activity: Arc<Activity>,
    floods: ClientFloods,
}

/// A forwarded call, as the gateway keeps it: counted as the connection's
/// activity (idle timeout) until it ends, timed to its response headers.
struct GatewayCall {
    _call: crate::grpc::InFlight,
    /// Its backend (the router's index), and when its HEADERS went there.
    backend: usize,
    sent: Option<std::time::Instant>,
}

/// What woke a connection's task besides its relay (see `serve_connection`).
enum Signal {
    Revoked,
    Expiry,
    Shutdown,
    IdleTick,
    Drain,
}

impl<S> relay::Host for GatewayHost<S>
where
    S: tower::Service<
        http::Request<()>,
        Response = http::Response<crate::grpc::Body>,
        Error = std::convert::Infallible,
    >,
{
    type Io = crate::proxy::BoxIo;
    type Call = GatewayCall;

    fn decide(&mut self, mut head: http::request::Parts) -> Decision<GatewayCall> {
        use std::task::Context;
        // The gateway's own identity headers, whatever the client put there,
        // are gone before the policy reads any header (`Route` adds them to
        // the head as it is written, so nothing else removes a forged one).
        // (A scan of the few names first: a removal hashes the name even
        // when it is absent, as it nearly always is, ~170 instructions each.)
        if head.headers.keys().any(crate::proxy::is_identity_name) {
            let forged: Vec<_> = head
                .headers
                .keys()
                .filter(|k| crate::proxy::is_identity_name(k))
                .cloned()
                .collect();
            for k in forged {
                head.headers.remove(k);
            }
        }
        // Every service in the stack is always ready and answers at once (the
        // policy is compiled, the route a lookup): polled once, never parked.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let answered = match self.svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {
                let fut = self.svc.call(http::Request::from_parts(head, ()));
                match std::pin::pin!(fut).poll(&mut cx) {
                    Poll::Ready(Ok(resp)) => Some(resp),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(resp) = answered else {
            let (head, _) =
                crate::grpc::status(crate::grpc::Code::Internal, "the call could not be decided")
                    .into_parts();
            return Decision::Answer(head);
        };
        let (parts, body) = resp.into_parts();
        match body {
            crate::grpc::Body::Forward(f) => Decision::Forward {
                backend: f.backend,
                head: f.head,
                added: f.added,
                call: GatewayCall {
                    _call: self.activity.call(),
                    backend: f.backend,
                    sent: None,
                },
            },
            _ => Decision::Answer(parts),
        }
    }

    fn dial(&mut self, backend: usize) -> relay::Dial<Self::Io> {
        let b = self.router.backend(backend).cloned();
        Box::pin(async move {
            match b {
                Some(b) => b.connect().await,
                None => Err(std::io::Error::other("no such backend")),
            }
        })
    }

    fn backend_name(&self, backend: usize) -> String {
        self.router
            .backend(backend)
            .map_or_else(|| "?".into(), |b| b.addr().to_string())
    }

    fn opened(&mut self, call: &mut GatewayCall) {
        // Backend latency from the request's HEADERS going out (not from
        // its dial or its wait for a stream slot), as the pool measured it.
        call.sent = Some(std::time::Instant::now());
    }

    fn answered(&mut self, call: &mut GatewayCall) {
        if let (Some(sent), Some(b)) = (call.sent, self.router.backend(call.backend)) {
            b.latency().observe(sent.elapsed().as_secs_f64());
        }
    }

    fn strict(&self) -> bool {
        http2::FloodGuard::strict(&self.floods)
    }

    fn flooded(&mut self, calls: u64, cancelled: u64) {
        http2::FloodGuard::flooded(&self.floods, calls, cancelled);
    }
}

/// A client's reset floods, remembered across its connections (see
/// `http2::FloodGuard`), logged and counted when they are found.
struct ClientFloods {
    conns: Arc<crate::conns::Conns>,
    peer: Arc<Peer>,
    metrics: Arc<Metrics>,
}

impl http2::FloodGuard for ClientFloods {
    fn strict(&self) -> bool {
        self.conns.recently_flooded(self.peer.principal())
    }

    fn flooded(&self, calls: u64, cancelled: u64) {
        warn!(
            client.id = self.peer.principal(),
            calls,
            cancelled,
            "client cancels most calls as they start (rapid reset): closing the connection"
        );
        self.conns.flooded(self.peer.principal());
        self.metrics
            .connections_closed
            .get_or_create(&ReasonLabels {
                reason: "reset_flood",
            })
            .inc();
    }
}

//! `ipcgate connect`: the client-side sidecar. Legacy clients speak plaintext
//! h2c to a local owner-only socket; every call goes on to the gateway over
//! mutual TLS, the gateway verified as configured (CA + name or SPIFFE ID, a
//! pinned fingerprint, the socket owner's uid). Streaming, trailers, deadlines
//! and cancellation pass through exactly as in the gateway: same proxy code.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::client::Target;
use crate::listen::{Accepted, ListenError, Listener};
use crate::proxy::Backend;

/// What the sidecar needs.
pub struct SidecarConfig {
    /// The plaintext socket legacy clients connect to (on Windows a pipe name).
    pub listen: PathBuf,
    /// Its permission bits (default 0600: only this account's processes).
    pub mode: u32,
    /// The gateway and how to verify it.
    pub gateway: Target,
}

/// A bound sidecar.
pub struct Sidecar {
    listener: Listener,
    path: PathBuf,
    gateway: Arc<Backend>,
}

impl Sidecar {
    /// Binds the local socket; the gateway is dialed on the first call.
    ///
    /// # Errors
    /// The socket cannot be bound safely.
    pub fn bind(cfg: SidecarConfig) -> Result<Sidecar, ListenError> {
        #[cfg(unix)]
        let listener = Listener::Uds(crate::listen::Uds::bind(&cfg.listen, cfg.mode, None)?);
        #[cfg(windows)]
        let listener = Listener::Pipe(crate::listen::Pipe::bind(
            &cfg.listen.to_string_lossy(),
            None,
        )?);
        let latency =
            prometheus_client::metrics::histogram::Histogram::new([0.001, 0.01, 0.1, 1.0]);
        Ok(Sidecar {
            listener,
            path: cfg.listen,
            gateway: Arc::new(Backend::tls(cfg.gateway, 100, latency)),
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(Accepted { conn: stream, .. }) => {
                        let gateway = self.gateway.clone();
                        let mut stopping = stopping.clone();
                        tasks.spawn(async move {
                            let svc = tower::service_fn(move |req| {
                                let gateway = gateway.clone();
                                async move { Ok::<_, Infallible>(gateway.forward(req).await) }
                            });
                            // HTTP/2 towards local clients: the gateway's default limits.
                            let settings = crate::http2::Settings::new(&crate::config::Limits::default());
                            let io = crate::authority::NormalizeAuthority::new(stream);
                            let conn = match crate::http2::handshake(io, settings).await {
                                Ok(c) => c,
                                Err(e) => {
                                    debug!(error = %e, "sidecar connection ended before HTTP/2");
                                    return;
                                }
                            };
                            let mut conn = crate::http2::Serve::new(conn, svc, settings);
                            tokio::select! {
                                r = &mut conn => {
                                    if let Err(e) = r {
                                        debug!(error = %e, "sidecar connection ended");
                                    }
                                    return;
                                }
                                _ = stopping.changed() => {}
                            }
                            conn.graceful_shutdown(crate::http2::SHUTDOWN_GRACE);
                            let _ = tokio::time::timeout(Duration::from_secs(15), conn).await;
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        info!("sidecar shutting down: draining calls in flight");
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(16), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

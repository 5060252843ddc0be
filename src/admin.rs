//! The admin socket: plain HTTP/1.1 on its own Unix socket (mode 0600 by
//! default, so only the gateway's account can use it).
//!
//! * `GET /metrics` — Prometheus / OpenMetrics text
//! * `GET /healthz` — `ok` while the gateway serves
//! * `POST /reload` — reload the policies now; JSON report, 200 or 500

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::listen::Listener;
use crate::metrics::Metrics;
use crate::reload::Reloader;

/// What the admin endpoints act on.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
}

/// A request's head must arrive within this, and an idle keep-alive
/// connection waits no longer for the next: a client that connects and says
/// nothing must not hold a task and a descriptor for ever.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Admin connections open at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin socket until the task is dropped.
pub async fn serve(mut listener: Listener, admin: Arc<Admin>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(crate::listen::Accepted { conn: stream, .. }) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("admin connection refused: {MAX_CONNECTIONS} open already");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(admin: &Arc<Admin>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, "/reload") => {
            let a = admin.clone();
            let report = tokio::task::spawn_blocking(move || a.reloader.reload_all()).await;
            match report {
                Ok(r) => {
                    let status = if r.ok() {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    let mut body = serde_json::to_vec_pretty(&r).unwrap_or_default();
                    body.push(b'\n');
                    reply(status, "application/json", body)
                }
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "reload task failed\n",
                ),
            }
        }
        (_, "/metrics" | "/healthz" | "/reload") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try GET /metrics, GET /healthz, POST /reload\n",
        ),
    }
}

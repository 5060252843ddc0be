//! The benchmark backend: `demo.v1.Echo` over h2c on one Unix socket and, for the
//! "direct mTLS" baseline, over rustls with client-certificate verification on
//! another. Runs until SIGINT/SIGTERM.
//!
//! ```text
//! backend --uds /tmp/echo.sock [--tls-uds /tmp/echo-tls.sock --cert s.pem --key s.key --client-ca ca.pem]
//! ```

use std::path::PathBuf;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipcgate::demo::EchoService;
use ipcgate::pb::echo_server::EchoServer;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    uds: PathBuf,
    #[arg(long)]
    tls_uds: Option<PathBuf>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Replies carry the payload alone, not the request metadata (benchmarks).
    #[arg(long)]
    payload_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let svc = EchoService {
        payload_only: args.payload_only,
        ..EchoService::default()
    };
    let _plain = ipcgate::demo::spawn_backend(&args.uds, svc.clone(), None)?;
    if let Some(tls_uds) = &args.tls_uds {
        let (Some(cert), Some(key), Some(ca)) = (&args.cert, &args.key, &args.client_ca) else {
            anyhow::bail!("--tls-uds needs --cert, --key and --client-ca");
        };
        // Same settings as the gateway: TLS 1.3, h2, client certs required, no
        // resumption — so the baseline pays exactly what the gateway pays.
        let tls = ipcgate::tls::server(&ipcgate::config::Tls::new(
            cert.clone(),
            key.clone(),
            ca.clone(),
        ))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
        let _ = std::fs::remove_file(tls_uds);
        let listener = tokio::net::UnixListener::bind(tls_uds)?;
        let routes = tonic::service::Routes::new(
            EchoServer::new(svc)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .prepare();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, routes) = (acceptor.clone(), routes.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    http.timer(TokioTimer::new());
                    let _ = http
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(routes))
                        .await;
                });
            }
        });
    }
    eprintln!("backend ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    Ok(())
}

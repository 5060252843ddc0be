//! The benchmark's floor for any TLS-terminating proxy: an L4 tunnel (like
//! ghostunnel in issue 6's table) that completes the same mutual-TLS handshake
//! as the gateway, then copies bytes to the backend socket. No HTTP/2, no
//! policy, no identity header: what it costs over direct mTLS is the price of
//! the extra hop alone, which no gateway can undercut. Not a product: the
//! numbers it gives bound what the gateway's targets can ask for.
//!
//! ```text
//! tunnel --listen /tmp/tunnel.sock --backend /tmp/echo.sock --cert s.pem --key s.key --client-ca ca.pem
//! ```

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: PathBuf,
    #[arg(long)]
    backend: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    client_ca: PathBuf,
    /// Copy buffer each way, KiB (16: a full TLS record's plaintext per read).
    #[arg(long, default_value_t = 16)]
    buf_kib: usize,
}

/// One worker thread, as the gateway runs on a 2-core machine.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The gateway's own TLS settings: TLS 1.3, h2, client certificates required.
    let tls = ipcgate::tls::server(&ipcgate::config::Tls::new(
        args.cert,
        args.key,
        args.client_ca,
    ))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let _ = std::fs::remove_file(&args.listen);
    let listener = tokio::net::UnixListener::bind(&args.listen)?;
    let backend = args.backend;
    let buf = args.buf_kib << 10;
    eprintln!("tunnel ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, backend) = (acceptor.clone(), backend.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let Ok(mut up) = tokio::net::UnixStream::connect(&backend).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut up, buf, buf).await;
        });
    }
}

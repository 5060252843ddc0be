//! The relay engine (`src/relay`) with a stand-in host, for issue 6's bench
//! before the gateway's request path moves onto it: TLS as the gateway does
//! it, the client's identity as XFCC, a set of allowed method paths in place
//! of the policy stack, one backend. Not the gateway: no metrics, audit,
//! routing, limits beyond the engine's own.
//!
//! ```text
//! relay --listen /tmp/relay.sock --backend /tmp/echo.sock --cert s.pem --key s.key --client-ca ca.pem \
//!       --allow /demo.v1.Echo/Unary --allow /demo.v1.Echo/ServerStream
//! ```

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use http::HeaderValue;
use ipcgate::relay::{Decision, Dial, Host, Options, Relay};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// A method path callers may use (repeat).
    #[arg(long)]
    allow: Vec<String>,
}

/// One worker thread, as the gateway runs on a 2-core machine.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = ipcgate::tls::server(&ipcgate::config::Tls::new(
        args.cert,
        args.key,
        args.client_ca,
    ))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let _ = std::fs::remove_file(&args.listen);
    let listener = tokio::net::UnixListener::bind(&args.listen)?;
    let allowed: Arc<HashSet<String>> = Arc::new(args.allow.into_iter().collect());
    let backend = Arc::new(args.backend);
    eprintln!("relay ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, backend, allowed) = (acceptor.clone(), backend.clone(), allowed.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(acceptor, stream, backend, allowed).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

struct Stand {
    backend: Arc<PathBuf>,
    allowed: Arc<HashSet<String>>,
    xfcc: HeaderValue,
}

impl Host for Stand {
    type Io = tokio::net::UnixStream;
    type Call = ();

    fn decide(&mut self, mut head: http::request::Parts) -> Decision<()> {
        if !self.allowed.contains(head.uri.path()) {
            let (resp, _) =
                ipcgate::grpc::status(ipcgate::grpc::Code::PermissionDenied, "denied").into_parts();
            return Decision::Answer(resp);
        }
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        match http::Uri::from_parts(uri) {
            Ok(u) => head.uri = u,
            Err(_) => {
                let (resp, _) =
                    ipcgate::grpc::status(ipcgate::grpc::Code::Internal, "bad URI").into_parts();
                return Decision::Answer(resp);
            }
        }
        head.headers.remove(ipcgate::proxy::XFCC);
        head.headers.insert(ipcgate::proxy::XFCC, self.xfcc.clone());
        Decision::Forward {
            backend: 0,
            head,
            call: (),
        }
    }

    fn dial(&mut self, _: usize) -> Dial<Self::Io> {
        let path = self.backend.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(&*path).await })
    }

    fn backend_name(&self, _: usize) -> String {
        self.backend.display().to_string()
    }
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::UnixStream,
    backend: Arc<PathBuf>,
    allowed: Arc<HashSet<String>>,
) -> io::Result<()> {
    let mut tls = acceptor.accept(stream).await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or_else(|| io::Error::other("no client certificate"))?
        .to_vec();
    let peer = ipcgate::identity::Peer::new(&chain, None, None).map_err(io::Error::other)?;
    ipcgate::relay::read_preface(&mut tls).await?;
    let host = Stand {
        backend,
        allowed,
        xfcc: peer.xfcc().clone(),
    };
    Relay::new(tls, host, Options::new(&ipcgate::config::Limits::default())).await
}

//! The example backend (`demo.v1.Echo`) and the self-contained `ipcgate demo`:
//! a temporary CA and certificates, the backend, the gateway, then allowed and
//! denied calls, each checked against what should happen.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::ca::{Ca, KeyType, LeafSpec};
use crate::pb::echo_client::EchoClient;
use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

/// The example policy, also shipped as `policy/demo.json`.
pub const DEMO_POLICY: &str = include_str!("../policy/demo.json");

/// An echo service that reports what it saw: request metadata in every reply, and
/// a count of calls whose handler was dropped before finishing (a cancel or reset
/// that reached the backend).
#[derive(Clone, Default)]
pub struct EchoService {
    pub cancelled: Arc<AtomicUsize>,
    pub calls: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Replies carry the payload alone, as a real service's would (benchmarks):
    /// echoing metadata makes a reply through a gateway, which adds XFCC, several
    /// times the size of a direct one.
    pub payload_only: bool,
}

impl EchoService {
    /// What the reply says the backend saw.
    fn seen(&self, md: &MetadataMap) -> Vec<String> {
        if self.payload_only {
            Vec::new()
        } else {
            metadata_list(md)
        }
    }
}

/// Counts a handler as cancelled if it is dropped before `done()`.
struct CancelGuard(Option<Arc<AtomicUsize>>);

impl CancelGuard {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn metadata_list(md: &MetadataMap) -> Vec<String> {
    md.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

fn fail(code: i32) -> Status {
    let mut md = MetadataMap::new();
    md.insert("x-echo-detail", "backend-trailer".parse().expect("static"));
    Status::with_details_and_metadata(
        Code::from_i32(code),
        "backend failed as asked",
        bytes::Bytes::from_static(b"\x08\x01details"),
        md,
    )
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let guard = CancelGuard(Some(self.cancelled.clone()));
        let metadata = self.seen(req.metadata());
        let r = req.into_inner();
        if r.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(r.delay_ms.into())).await;
        }
        guard.done();
        if r.fail_with != 0 {
            return Err(fail(r.fail_with));
        }
        let mut resp = Response::new(EchoReply {
            payload: r.payload,
            metadata,
            seq: 0,
        });
        resp.metadata_mut()
            .insert("x-echo-header", "from-backend".parse().expect("static"));
        Ok(resp)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.seen(req.metadata());
        let r = req.into_inner();
        let guard = CancelGuard(Some(self.cancelled.clone()));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for seq in 0..r.count {
                if r.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(r.delay_ms.into())).await;
                }
                let md = if seq == 0 {
                    metadata.clone()
                } else {
                    Vec::new()
                };
                let reply = EchoReply {
                    payload: r.payload.clone(),
                    metadata: md,
                    seq,
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return; // the call went away: guard counts it
                }
            }
            if r.fail_with != 0 {
                let _ = tx.send(Err(fail(r.fail_with))).await;
            }
            guard.done();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.seen(req.metadata());
        let mut stream = req.into_inner();
        let mut n = 0u32;
        let mut last = Vec::new();
        while let Some(m) = stream.next().await {
            let m = m?;
            n += 1;
            last = m.payload;
        }
        Ok(Response::new(EchoReply {
            payload: last,
            metadata,
            seq: n,
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut seq = 0;
        let out: ReplyStream = Box::pin(req.into_inner().map(move |m| {
            seq += 1;
            m.map(|m| EchoReply {
                payload: m.payload,
                metadata: Vec::new(),
                seq,
            })
        }));
        let mut resp = Response::new(out);
        resp.metadata_mut()
            .insert("x-echo-header", "from-backend".parse().expect("static"));
        Ok(resp)
    }
}

/// Serves [`EchoService`] (h2c) on a Unix socket until the returned handle is
/// aborted or the runtime ends. `max_streams` caps concurrent streams per
/// connection, as many real servers do. Every accepted connection is counted in
/// `svc.connections`.
///
/// # Errors
/// The socket cannot be bound.
#[cfg(unix)]
pub fn spawn_backend(
    path: &std::path::Path,
    svc: EchoService,
    max_streams: Option<u32>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let connections = svc.connections.clone();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(move |s| {
        connections.fetch_add(1, Ordering::SeqCst);
        s
    });
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .max_concurrent_streams(max_streams)
            .add_service(
                EchoServer::new(svc)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .serve_with_incoming(incoming)
            .await;
    }))
}

/// Options of `ipcgate demo`.
#[derive(Debug, Default, Clone)]
pub struct DemoOptions {
    pub keep_running: bool,
    pub dir: Option<PathBuf>,
}

struct Expect {
    ok: bool,
}

impl Expect {
    fn check(&mut self, what: &str, pass: bool, detail: String) {
        let mark = if pass { "ok  " } else { "FAIL" };
        println!("  [{mark}] {what:<52} {detail}");
        self.ok &= pass;
    }
}

/// Issues into `dir` a server certificate for `localhost` (`gateway.pem`,
/// `gateway.key`) and a client certificate `spiffe://<domain>/<name>` for
/// each of `clients` (`<name>.pem`, `<name>.key`): the demo's set, which
/// the reload tests use too.
///
/// # Errors
/// Issuing or writing a certificate.
pub(crate) fn leaves(
    ca: &Ca,
    dir: &Path,
    domain: &str,
    clients: &[&str],
) -> Result<(), crate::ca::CaError> {
    let issue = |spec: LeafSpec, name: &str| ca.issue(&spec)?.save(&dir.join(name), true).map(drop);
    issue(
        LeafSpec {
            dns: vec!["localhost".into()],
            server: true,
            ..Default::default()
        },
        "gateway",
    )?;
    for who in clients {
        issue(
            LeafSpec {
                spiffe: vec![format!("spiffe://{domain}/{who}")],
                client: true,
                ..Default::default()
            },
            who,
        )?;
    }
    Ok(())
}

/// Runs the demo; returns whether every call behaved as expected.
///
/// # Errors
/// Setup failures (temp dir, certificates, binding).
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("ipcgate-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    println!("ipcgate demo: working in {}", dir.display());

    let ca = Ca::generate("ipcgate demo CA", crate::ca::CA_TTL, KeyType::EcdsaP256)?;
    ca.save(&dir, true)?;
    leaves(&ca, &dir, "demo.local", &["alice", "mallory"])?;
    let outsider_ca = Ca::generate("some other CA", crate::ca::CA_TTL, KeyType::EcdsaP256)?;
    outsider_ca
        .issue(&LeafSpec {
            spiffe: vec!["spiffe://demo.local/alice".into()],
            client: true,
            ..Default::default()
        })?
        .save(&dir.join("outsider"), true)?;
    println!(
        "  CA and certificates: ca.pem, gateway.pem (DNS localhost), alice.pem and mallory.pem"
    );
    println!("  (SPIFFE IDs spiffe://demo.local/alice and /mallory), outsider.pem (same SPIFFE ID as alice, another CA)");

    let svc = EchoService::default();
    #[cfg(unix)]
    let (backend, backend_sock, gateway_sock, listen) = {
        let backend_sock = dir.join("echo.sock");
        let backend = spawn_backend(&backend_sock, svc.clone(), None)?;
        let listen = "uds = \"gateway.sock\"\nmode = \"0600\"".to_owned();
        let backend_sock = format!("unix:{}", backend_sock.display());
        (backend, backend_sock, dir.join("gateway.sock"), listen)
    };
    // Windows: the backend on loopback TCP, the gateway on a named pipe.
    #[cfg(windows)]
    let (backend, backend_sock, gateway_sock, listen) = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let backend = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(svc.clone()))
                .serve_with_incoming(incoming),
        );
        let pipe = format!(r"\\.\pipe\ipcgate-demo-{}", std::process::id());
        let listen = format!("pipe = '{pipe}'");
        (
            backend,
            format!("http://{addr}"),
            PathBuf::from(pipe),
            listen,
        )
    };
    std::fs::write(dir.join("policy.json"), DEMO_POLICY)?;
    let config_text = format!(
        "[listen]\n{listen}\n\n[tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n\n[policy]\nfile = \"policy.json\"\n\n[[route]]\nservice = \"demo.v1.Echo\"\nbackend = \"{backend_sock}\"\n"
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config_text)?;
    let config = crate::config::Config::load(&config_path)?;
    let gateway = crate::Gateway::bind(config).await?;
    let policy = gateway.authorizer().enforced();
    println!("  backend demo.v1.Echo on {backend_sock}");
    println!(
        "  gateway on {} with policy {:?} (policy/demo.json)",
        gateway_sock.display(),
        policy.name
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(gateway.run(async {
        let _ = stop_rx.await;
    }));

    println!("\ncalls through the gateway:");
    let mut e = Expect { ok: true };
    let client = |who: &str| -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
        let cfg = crate::client::config_from_files(
            &dir.join(format!("{who}.pem")),
            &dir.join(format!("{who}.key")),
            &dir.join("ca.pem"),
        )?;
        Ok(EchoClient::new(crate::client::channel(
            gateway_sock.clone(),
            "localhost".into(),
            cfg,
        )))
    };
    let req = |payload: &str| EchoRequest {
        payload: payload.as_bytes().to_vec(),
        count: 3,
        ..Default::default()
    };

    let mut alice = client("alice")?;
    let mut forged = Request::new(req("hello"));
    forged.metadata_mut().insert(
        "x-forwarded-client-cert",
        "Hash=00;URI=spiffe://demo.local/admin".parse()?,
    );
    match alice.unary(forged).await {
        Ok(r) => {
            let xfcc = r
                .get_ref()
                .metadata
                .iter()
                .filter(|m| m.starts_with("x-forwarded-client-cert="))
                .cloned()
                .collect::<Vec<_>>();
            let real = xfcc.len() == 1
                && xfcc[0].contains("URI=spiffe://demo.local/alice")
                && !xfcc[0].contains("admin");
            e.check(
                "alice   Unary (with a forged XFCC header)",
                real,
                format!("OK; backend saw {}", xfcc.join(" | ")),
            );
        }
        Err(s) => e.check(
            "alice   Unary",
            false,
            format!("{:?} {}", s.code(), s.message()),
        ),
    }
    match alice.server_stream(req("tick")).await {
        Ok(r) => {
            let mut n = 0;
            let mut s = r.into_inner();
            while let Some(Ok(_)) = s.next().await {
                n += 1;
            }
            e.check(
                "alice   ServerStream",
                n == 3,
                format!("OK, {n} messages (rule alice-all-echo)"),
            );
        }
        Err(s) => e.check(
            "alice   ServerStream",
            false,
            format!("{:?} {}", s.code(), s.message()),
        ),
    }
    let denied = |r: Result<Code, Status>| match r {
        Ok(_) => (false, "allowed?!".to_owned()),
        Err(s) => (
            s.code() == Code::PermissionDenied,
            format!("{:?}: {}", s.code(), s.message()),
        ),
    };
    let r = alice
        .client_stream(tokio_stream::iter(vec![req("a"), req("b")]))
        .await
        .map(|_| Code::Ok);
    let (pass, d) = denied(r);
    e.check(
        "alice   ClientStream (deny rule no-client-streaming)",
        pass,
        d,
    );

    let mut mallory = client("mallory")?;
    let r = mallory.unary(req("hi")).await;
    e.check(
        "mallory Unary (rule anyone-unary)",
        r.is_ok(),
        r.map(|_| "OK".to_owned())
            .unwrap_or_else(|s| format!("{:?}", s.code())),
    );
    let r = mallory.server_stream(req("hi")).await.map(|_| Code::Ok);
    let (pass, d) = denied(r);
    e.check("mallory ServerStream (no allow rule)", pass, d);

    let outsider = crate::client::config_from_files(
        &dir.join("outsider.pem"),
        &dir.join("outsider.key"),
        &dir.join("ca.pem"),
    )?;
    match crate::client::probe(&gateway_sock, "localhost", outsider).await {
        Ok(()) => e.check(
            "outsider (cert from another CA)",
            false,
            "handshake accepted?!".into(),
        ),
        Err(err) => e.check(
            "outsider (cert from another CA)",
            true,
            format!("handshake refused: {err}"),
        ),
    }

    println!(
        "\n{}",
        if e.ok {
            "demo: every call behaved as the policy says"
        } else {
            "demo: SOME CALLS DID NOT BEHAVE AS EXPECTED"
        }
    );
    if opts.keep_running {
        println!("\nstill serving; call it, e.g. with grpcurl:");
        println!(
            "  grpcurl -unix -authority localhost -cacert {d}/ca.pem -cert {d}/alice.pem -key {d}/alice.key \\\n    -import-path proto -proto demo/v1/echo.proto -d '{{\"payload\":\"aGk=\"}}' {s} demo.v1.Echo/Unary",
            d = dir.display(),
            s = gateway_sock.display()
        );
        println!("press Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    let _ = gw.await;
    backend.abort();
    Ok(e.ok)
}

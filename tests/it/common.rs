use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipcgate::ca::{Ca, KeyType, LeafSpec};
use ipcgate::demo::EchoService;
use ipcgate::pb::echo_client::EchoClient;
use ipcgate::policy::Authorizer;
use rustls::ClientConfig;
use tempfile::TempDir;
use tonic::transport::Channel;

/// The policy most tests run under.
pub const POLICY: &str = r#"{
  "name": "test-policy",
  "deny_rules": [
    { "name": "deny-secret", "request": { "paths": ["*/Secret"] } },
    { "name": "deny-banned-role",
      "request": { "paths": ["/demo.v1.Echo/Unary"],
                   "headers": [ { "key": "X-Role", "values": ["banned*"] } ] } }
  ],
  "allow_rules": [
    { "name": "alice-echo",
      "source": { "principals": ["spiffe://test.local/alice"] },
      "request": { "paths": ["/demo.v1.Echo/*", "/other.v1.Svc/*"] } },
    { "name": "svc-dns-unary",
      "source": { "principals": ["*.svc.test"] },
      "request": { "paths": ["/demo.v1.Echo/Unary"] } },
    { "name": "carol-by-subject",
      "source": { "principals": ["CN=carol,O=Example"] },
      "request": { "paths": ["/demo.v1.Echo/Unary"] } },
    { "name": "admin-header",
      "request": { "paths": ["/demo.v1.Echo/ServerStream"],
                   "headers": [ { "key": "x-role", "values": ["admin", "*-ops"] } ] } }
  ]
}"#;

/// A CA and the gateway's server certificate in a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("ipcgate-it-")
            .tempdir()
            .unwrap();
        let ca = Ca::generate("test CA", Duration::from_secs(86_400), KeyType::EcdsaP256).unwrap();
        ca.save(dir.path(), false).unwrap();
        ca.reissue_crl(dir.path(), ipcgate::ca::CRL_TTL).unwrap();
        ca.issue(&LeafSpec {
            dns: vec!["localhost".into()],
            server: true,
            ..Default::default()
        })
        .unwrap()
        .save(&dir.path().join("gateway"), false)
        .unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a client certificate from this CA and returns a client config.
    pub fn client(&self, spec: LeafSpec) -> Arc<ClientConfig> {
        let issued = self.ca.issue(&spec).unwrap();
        client_config(&issued.cert_pem, &issued.key_pem, self.ca.cert_pem())
    }

    /// A client certificate for the SPIFFE ID `id` from this CA.
    pub fn issue_spiffe(&self, id: &str) -> ipcgate::ca::Issued {
        self.ca
            .issue(&LeafSpec {
                spiffe: vec![id.into()],
                client: true,
                ..Default::default()
            })
            .unwrap()
    }

    /// Issues a client certificate for `id`, saves it as `name.pem` and
    /// `name.key` (for the CLI, e.g. to revoke it) and returns a client config.
    pub fn saved_spiffe(&self, id: &str, name: &str) -> Arc<ClientConfig> {
        let issued = self.issue_spiffe(id);
        issued.save(&self.path(name), false).unwrap();
        client_config(&issued.cert_pem, &issued.key_pem, self.ca.cert_pem())
    }

    /// A client certificate for `id` that expires `secs` seconds from now.
    pub fn short_lived(&self, id: &str, secs: i64) -> Arc<ClientConfig> {
        let now = time::OffsetDateTime::now_utc();
        let short = self
            .ca
            .issue(&LeafSpec {
                spiffe: vec![id.into()],
                client: true,
                validity: Some((
                    now - time::Duration::minutes(1),
                    now + time::Duration::seconds(secs),
                )),
                ..Default::default()
            })
            .unwrap();
        client_config(&short.cert_pem, &short.key_pem, self.ca.cert_pem())
    }

    pub fn spiffe(&self, id: &str) -> Arc<ClientConfig> {
        let issued = self.issue_spiffe(id);
        client_config(&issued.cert_pem, &issued.key_pem, self.ca.cert_pem())
    }
}

pub fn client_config(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let roots = ipcgate::tls::Roots::from_certs(
        CertificateDer::pem_slice_iter(ca_pem.as_bytes()).map(Result::unwrap),
    )
    .unwrap();
    ipcgate::client::config(chain, key, roots).unwrap()
}

/// Options for [`Harness::start_with`].
#[derive(Default)]
pub struct Opts {
    pub policy: Option<String>,
    /// Extra TOML appended to the generated config (e.g. a `[limits]` table).
    pub extra: String,
    pub backend_max_streams: Option<u32>,
    /// Extra keys for the `[policy]` table (e.g. `shadow_file = ...`).
    pub policy_keys: String,
    /// Write the admin socket (`admin.sock`) and audit file (`audit.jsonl`).
    pub admin: bool,
    pub audit_file: bool,
    /// Files to write into the harness directory before the gateway starts.
    pub files: Vec<(&'static str, String)>,
    /// Extra keys for the `[tls]` table (e.g. `crl = ["ca.crl"]`).
    pub tls_keys: String,
    /// Replaces the `[listen]` table (e.g. several `[[listen]]` tables).
    pub listen: Option<String>,
}

/// A backend and a gateway in front of it, both in this process.
pub struct Harness {
    pub pki: Pki,
    pub gw_sock: PathBuf,
    pub backend_sock: PathBuf,
    pub echo: EchoService,
    pub authz: std::sync::Arc<Authorizer>,
    pub metrics: std::sync::Arc<ipcgate::metrics::Metrics>,
    pub reloader: std::sync::Arc<ipcgate::reload::Reloader>,
    /// Where the gateway listens (TCP ports resolved).
    pub addrs: Vec<ipcgate::config::ListenAt>,
    backend_max_streams: Option<u32>,
    backend: Option<Backend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    gateway: Option<tokio::task::JoinHandle<()>>,
}

pub fn config_text(pki: &Pki, backend_sock: &Path, extra: &str) -> String {
    config_text_with(pki, backend_sock, extra, "", "")
}

pub fn config_text_with(
    pki: &Pki,
    backend_sock: &Path,
    extra: &str,
    policy_keys: &str,
    tls_keys: &str,
) -> String {
    format!(
        r#"
[listen]
uds = "gateway.sock"

[tls]
cert = "gateway.pem"
key = "gateway.key"
client_ca = "ca.pem"
{tls_keys}

[policy]
file = "policy.json"
{policy_keys}

[[route]]
service = "demo.v1.Echo"
backend = "unix:{}"
{extra}
"#,
        backend_sock.display()
    )
    .replace("{dir}", &pki.dir.path().display().to_string())
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Opts::default()).await
    }

    pub async fn start_with(opts: Opts) -> Harness {
        Self::start_in(Pki::new(), opts).await
    }

    /// [`Harness::start_with`] on a PKI made beforehand.
    pub async fn start_in(pki: Pki, opts: Opts) -> Harness {
        let backend_sock = pki.path("echo.sock");
        let echo = EchoService::default();
        let backend = Backend::start(&backend_sock, echo.clone(), opts.backend_max_streams);
        std::fs::write(
            pki.path("policy.json"),
            opts.policy.as_deref().unwrap_or(POLICY),
        )
        .unwrap();
        for (name, text) in &opts.files {
            std::fs::write(pki.path(name), text).unwrap();
        }
        let cfg_path = pki.path("gateway.toml");
        let mut extra = opts.extra.clone();
        if opts.admin {
            extra.push_str("\n[admin]\nuds = \"admin.sock\"\n");
        }
        if opts.audit_file {
            extra.push_str("\n[audit]\nfile = \"audit.jsonl\"\n");
        }
        let mut text = config_text_with(
            &pki,
            &backend_sock,
            &extra,
            &opts.policy_keys,
            &opts.tls_keys,
        );
        if let Some(l) = &opts.listen {
            text = text.replace("[listen]\nuds = \"gateway.sock\"\n", l);
        }
        std::fs::write(&cfg_path, text).unwrap();
        let config = ipcgate::config::Config::load(&cfg_path).unwrap();
        let gateway = ipcgate::Gateway::bind(config).await.unwrap();
        let authz = gateway.authorizer();
        let metrics = gateway.metrics();
        let reloader = gateway.reloader();
        let gw_sock = gateway.socket_path().to_owned();
        let addrs = gateway.local_addrs();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(gateway.run(async {
            let _ = rx.await;
        }));
        Harness {
            pki,
            gw_sock,
            backend_sock,
            echo,
            authz,
            metrics,
            reloader,
            addrs,
            backend_max_streams: opts.backend_max_streams,
            backend: Some(backend),
            stop: Some(tx),
            gateway: Some(task),
        }
    }

    pub fn client(&self, cfg: Arc<ClientConfig>) -> EchoClient<Channel> {
        EchoClient::new(ipcgate::client::channel(
            self.gw_sock.clone(),
            "localhost".into(),
            cfg,
        ))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    pub fn alice(&self) -> EchoClient<Channel> {
        self.client(self.pki.spiffe("spiffe://test.local/alice"))
    }

    /// Kills the backend: listener and every connection close at once.
    pub fn stop_backend(&mut self) {
        self.backend.take();
    }

    pub fn start_backend(&mut self) {
        self.backend = Some(Backend::start(
            &self.backend_sock,
            self.echo.clone(),
            self.backend_max_streams,
        ));
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(g) = self.gateway.take() {
            g.await.unwrap();
        }
    }

    /// Sends one raw HTTP/2 request over mTLS and returns (HTTP status, grpc-status).
    pub async fn raw(&self, method: http::Method, path: &str) -> (u16, Option<String>) {
        let (mut tx, _conn) = alice_h2(self).await;
        let uri = http::Uri::builder()
            .scheme("http")
            .authority("localhost")
            .path_and_query(path)
            .build()
            .unwrap();
        // One length-prefixed empty message: a valid EchoRequest.
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let mut grpc = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        let collected = resp.into_body().collect().await.unwrap();
        if grpc.is_none() {
            grpc = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned());
        }
        (status, grpc)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.backend.take();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One mTLS connection to the gateway as alice, driven by hyper's HTTP/2
/// client; the task ends when the gateway closes the connection.
pub async fn alice_h2<B>(
    h: &Harness,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<()>,
)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = alice_tls(h).await;
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, task)
}

pub fn req(payload: &[u8]) -> ipcgate::pb::EchoRequest {
    ipcgate::pb::EchoRequest {
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// The metadata entries the backend reported seeing under `key`.
pub fn seen<'a>(reply: &'a ipcgate::pb::EchoReply, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    reply
        .metadata
        .iter()
        .filter_map(|m| m.strip_prefix(&prefix))
        .collect()
}

/// Guards against a hang, not a performance assertion: generous by design.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s (hung)"))
}

/// The tonic backend on a runtime of its own, so that stopping it closes its
/// listener and all its connections like a process exit would.
pub struct Backend {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(path: &Path, echo: EchoService, max_streams: Option<u32>) -> Backend {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _server = ipcgate::demo::spawn_backend(&path, echo, max_streams).unwrap();
                ready_tx.send(()).unwrap();
                let _ = stopped.await;
            });
            rt.shutdown_background();
            let _ = std::fs::remove_file(&path);
        });
        ready_rx.recv().unwrap();
        Backend {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 request to the admin socket: (status, body).
pub async fn admin(sock: &Path, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series in OpenMetrics text, e.g.
/// `metric(&text, "ipcgate_shadow_calls_total{decision=\"deny\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Polls until `f` holds (or the hang guard fires).
/// The gateway's handshake count for `result` and `reason` (its metric).
pub fn handshakes(h: &Harness, result: &'static str, reason: &'static str) -> u64 {
    h.metrics
        .handshakes
        .get_or_create(&ipcgate::metrics::HandshakeLabels { result, reason })
        .get()
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    within(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// One HTTP/2 frame on the wire.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A request header block for a hand-driven client: `:method POST`, `:scheme
/// http`, `:path` (left out if empty), `:authority` `localhost`, content-type and
/// te, then `extra` (static-table indices, literals never indexed).
pub fn block(path: &[u8], extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    block_for(path, b"localhost", extra)
}

/// [`block`] with another `:authority`.
pub fn block_for(path: &[u8], authority: &[u8], extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    if !path.is_empty() {
        b.push(0x04); // :path, literal never indexed
        b.push(u8::try_from(path.len()).unwrap());
        b.extend_from_slice(path);
    }
    b.extend_from_slice(&[0x01, u8::try_from(authority.len()).unwrap()]); // :authority
    b.extend_from_slice(authority);
    let mut fields: Vec<(&[u8], &[u8])> =
        vec![(b"content-type", b"application/grpc"), (b"te", b"trailers")];
    fields.extend_from_slice(extra);
    for (n, v) in fields {
        b.push(0x00);
        b.push(u8::try_from(n.len()).unwrap());
        b.extend_from_slice(n);
        b.push(u8::try_from(v.len()).unwrap());
        b.extend_from_slice(v);
    }
    b
}

/// A hand-driven HTTP/2 peer, for what a well-behaved one never does: frames
/// go out as written, come in parsed; SETTINGS are acknowledged, a PING is
/// never answered.
pub struct Frames<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Frames<S> {
    pub fn new(io: S) -> Frames<S> {
        Frames {
            io,
            buf: Vec::new(),
        }
    }

    /// A client's start on `io`: the preface, then SETTINGS carrying
    /// `settings`.
    pub async fn open(mut io: S, settings: &[u8]) -> Frames<S> {
        use tokio::io::AsyncWriteExt;
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        io.write_all(&frame(0x4, 0, 0, settings)).await.unwrap();
        Frames::new(io)
    }

    /// The next frame (kind, flags, stream, payload); `None` once the
    /// connection is closed.
    pub async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let id = u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let payload: Vec<u8> = self.buf.drain(..9 + len).skip(9).collect();
                    if kind == 0x4 && flags & 0x1 == 0 {
                        let _ = self.io.write_all(&frame(0x4, 0x1, 0, &[])).await;
                    }
                    return Some((kind, flags, id, payload));
                }
            }
            let mut chunk = [0u8; 16 << 10];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// An mTLS connection to the gateway as alice.
pub async fn alice_tls(h: &Harness) -> tokio_rustls::client::TlsStream<ipcgate::client::ClientIo> {
    ipcgate::client::connect(
        &h.gw_sock,
        "localhost",
        h.pki.spiffe("spiffe://test.local/alice"),
    )
    .await
    .unwrap()
}

/// A gateway from a config file, running in this process.
pub struct Running {
    pub sock: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(config: &Path) -> Running {
        let gw = ipcgate::Gateway::bind(ipcgate::config::Config::load(config).unwrap())
            .await
            .unwrap();
        let sock = gw.socket_path().to_owned();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async {
            let _ = rx.await;
        }));
        Running { sock, stop, task }
    }

    /// Shuts it down and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A plain h2c channel to a Unix socket (a legacy client of the sidecar, a
/// client of a bare relay).
pub fn h2c_channel(path: PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_: http::Uri| {
            let p = path.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(TokioIo::new) }
        }),
    )
}

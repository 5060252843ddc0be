//! The `ipcgate` command line. All the work is in the library; this file parses
//! flags and reports errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipcgate::ca::{Ca, KeyType, LeafSpec};

/// See `ipcgate::alloc`: mimalloc for small objects, the system allocator for
/// buffers.
#[global_allocator]
static GLOBAL: ipcgate::alloc::Split = ipcgate::alloc::Split;

#[derive(Parser)]
#[command(
    name = "ipcgate",
    version,
    about = "mTLS and per-method gRPC authorization in front of local services"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway until SIGINT or SIGTERM.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Self-contained demo: temporary CA and certs, a backend, the gateway, and
    /// allowed and denied calls. Exits 0 when everything behaved as expected.
    Demo {
        /// Keep serving after the calls and print how to call the gateway.
        #[arg(long)]
        keep_running: bool,
        /// Work in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Manage the local CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Issue certificates from the local CA.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Work with authorization policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Make one gRPC call over a Unix socket with mutual TLS and print its status.
    Call(CallArgs),
    /// Client-side sidecar: serve plaintext h2c on a local owner-only socket and
    /// forward every call to the gateway over mutual TLS, verifying the gateway.
    Connect(ConnectArgs),
    /// Re-issue the CA's CRL (<ca-dir>/ca.crl) before it expires.
    Crl {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, value_parser = ttl, default_value = "7d")]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a CA: <dir>/ca.pem and <dir>/ca.key (0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "ipcgate local CA")]
        cn: String,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
        /// Lifetime, e.g. 3650d.
        #[arg(long, value_parser = ttl, default_value = "3650d")]
        ttl: Duration,
        /// SPIFFE trust domain: the CA signs SPIFFE IDs only inside it.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Issue a leaf certificate: <out>.pem and <out>.key (0600).
    Issue(IssueArgs),
    /// Sign a certificate signing request: <out>.pem. The CA decides purpose,
    /// validity and serial; names are checked against its rules.
    Sign {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        client: bool,
        #[arg(long)]
        server: bool,
        #[arg(long, value_parser = ttl)]
        ttl: Option<Duration>,
        /// The subject CN. A CSR's own CN is refused unless this approves it;
        /// without it the certificate's subject is empty.
        #[arg(long)]
        cn: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate this CA issued and write a fresh <ca-dir>/ca.crl.
    Revoke {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        reason: ipcgate::ca::Reason,
        /// How long the new CRL is valid (its nextUpdate).
        #[arg(long, value_parser = ttl, default_value = "7d")]
        crl_ttl: Duration,
    },
    /// Renew a certificate: same names and purpose, new validity and serial,
    /// written over --cert (and over --key with --new-key).
    Renew {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Generate a new key as well.
        #[arg(long)]
        new_key: bool,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
        #[arg(long, value_parser = ttl)]
        ttl: Option<Duration>,
    },
    /// Show a certificate: names, fingerprint, validity, serial, purpose; with
    /// --ca-dir whether that CA issued it and whether it is revoked.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct IssueArgs {
    #[arg(long)]
    ca_dir: PathBuf,
    /// Output path without extension.
    #[arg(long)]
    out: PathBuf,
    /// SPIFFE ID (URI SAN), repeatable.
    #[arg(long)]
    spiffe: Vec<String>,
    /// DNS name (DNS SAN), repeatable.
    #[arg(long)]
    dns: Vec<String>,
    /// Subject common name (defaults to the first DNS name; never taken from
    /// a SPIFFE ID).
    #[arg(long)]
    cn: Option<String>,
    /// For clients (clientAuth EKU).
    #[arg(long)]
    client: bool,
    /// For servers (serverAuth EKU).
    #[arg(long)]
    server: bool,
    /// Lifetime, e.g. 24h (default: 24h for clients, 90d for servers).
    #[arg(long, value_parser = ttl)]
    ttl: Option<Duration>,
    #[arg(long, value_enum, default_value_t)]
    key_type: KeyType,
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate policy files and summarize them; exits non-zero on any error.
    Check { files: Vec<PathBuf> },
    /// Show how a policy decides one call, rule by rule.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    #[arg(long)]
    policy: PathBuf,
    /// The client's certificate (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// The method, `/package.Service/Method`.
    #[arg(long)]
    method: String,
    /// A request header, `key=value`; repeatable.
    #[arg(long = "header", value_parser = header_arg)]
    headers: Vec<(String, String)>,
    /// The socket peer's uid (for `source.uids` rules).
    #[arg(long)]
    uid: Option<u32>,
    /// The socket peer's effective gid (for `source.gids` rules).
    #[arg(long)]
    gid: Option<u32>,
    /// One of the socket peer's supplementary groups; repeatable. A `gids`
    /// rule holds for the effective group or any of these.
    #[arg(long = "group")]
    groups: Vec<u32>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// One call to the gateway (or any gRPC server on a Unix socket with mTLS):
/// prints the gRPC status. For scripts and health checks.
#[derive(Args)]
struct CallArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// CA bundle to verify the server with.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// `/package.Service/Method`.
    #[arg(long)]
    method: String,
    /// The request message, protobuf-encoded, in hex (default: empty message).
    #[arg(long, default_value = "")]
    data_hex: String,
    #[arg(long = "header", value_parser = header_arg)]
    headers: Vec<(String, String)>,
}

#[derive(Args)]
struct ConnectArgs {
    /// Local socket for legacy clients: unix:/path (or a plain path).
    #[arg(long)]
    listen: String,
    /// Its permissions (octal).
    #[arg(long, default_value = "0600")]
    mode: String,
    /// The gateway's socket: unix:/path (or a plain path).
    #[arg(long)]
    gateway: String,
    /// This client's certificate and key, presented to the gateway.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// CA bundle to verify the gateway with.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// DNS name the gateway's certificate must carry (with --ca).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// SPIFFE ID the gateway's certificate must carry instead (with --ca).
    #[arg(long)]
    server_spiffe: Option<String>,
    /// Pinned SHA-256 of the gateway's certificate (hex, colons optional).
    #[arg(long)]
    server_sha256: Option<String>,
    /// The account that must own the gateway's socket (checked before TLS).
    #[arg(long)]
    server_uid: Option<u32>,
}

fn unix_path(s: &str) -> PathBuf {
    PathBuf::from(
        s.strip_prefix("unix://")
            .or(s.strip_prefix("unix:"))
            .unwrap_or(s),
    )
}

fn header_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

fn ttl(s: &str) -> Result<Duration, String> {
    ipcgate::duration::parse(s)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ipcgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The gateway's runtime: `[runtime] threads` workers, unless
/// TOKIO_WORKER_THREADS says otherwise (benchmark A/B runs).
fn gateway_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        b.worker_threads(threads);
    }
    Ok(b.enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config } => {
            init_tracing("info");
            // Before any thread exists: taking them clears the environment.
            let inherited = ipcgate::systemd::take_listeners();
            let config = ipcgate::config::Config::load(&config)?;
            gateway_runtime(config.threads)?.block_on(async {
                let gateway = ipcgate::Gateway::bind_with(config, inherited).await?;
                gateway.run(shutdown_signal()).await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { keep_running, dir } => {
            init_tracing("warn");
            let ok = runtime()?.block_on(ipcgate::demo::run(ipcgate::demo::DemoOptions {
                keep_running,
                dir,
            }))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Ca(CaCmd::Init {
            dir,
            cn,
            key_type,
            ttl,
            trust_domain,
            force,
        }) => {
            let mut ca = Ca::generate(&cn, ttl, key_type)?;
            ca.config.trust_domain = trust_domain;
            let (c, k) = ca.save(&dir, force)?;
            let crl = ca.reissue_crl(&dir, ipcgate::ca::CRL_TTL)?;
            println!(
                "CA certificate: {}\nCA key (0600): {}\nCRL (empty, valid 7 days): {}",
                c.display(),
                k.display(),
                crl.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Sign {
            ca_dir,
            csr,
            out,
            client,
            server,
            ttl,
            cn,
            force,
        }) => {
            let ca = Ca::load(&ca_dir)?;
            let pem = std::fs::read_to_string(&csr)
                .map_err(|e| anyhow::anyhow!("{}: {e}", csr.display()))?;
            let issued = ca
                .sign_csr(&pem, client, server, ttl, cn.as_deref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", csr.display()))?;
            let leaf = ipcgate::ca::lifecycle::leaf_info(issued.cert_der.clone())
                .map_err(|e| anyhow::anyhow!("the certificate made: {e}"))?;
            ipcgate::ca::lifecycle::check_key(&ca_dir, &leaf.spki)
                .map_err(|e| anyhow::anyhow!("{}: {e}", csr.display()))?;
            let path = issued.save_cert(&out, force)?;
            ca.record(&ca_dir, &issued.cert_der)?;
            println!("certificate: {}", path.display());
            // What the requester asked for and got, for the operator to see.
            println!("subject:     {}", leaf.subject);
            for id in &leaf.names.spiffe {
                println!("URI SAN:     {id}");
            }
            for name in &leaf.names.dns {
                println!("DNS SAN:     {name}");
            }
            for ip in &leaf.names.ips {
                println!("IP SAN:      {ip}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Revoke {
            ca_dir,
            cert,
            reason,
            crl_ttl,
        }) => {
            let ca = Ca::load(&ca_dir)?;
            let leaf = ipcgate::ca::lifecycle::read_leaf(&cert)?;
            let done = ca.revoke(&ca_dir, &leaf, reason, crl_ttl)?;
            println!("revoked serial {} ({})", leaf.serial_hex, leaf.subject);
            for serial in &done.also {
                println!("revoked serial {serial} (the same key)");
            }
            println!("CRL: {}", done.crl.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Renew {
            ca_dir,
            cert,
            key,
            new_key,
            key_type,
            ttl,
        }) => {
            let ca = Ca::load(&ca_dir)?;
            let leaf = ipcgate::ca::lifecycle::read_leaf(&cert)?;
            if !new_key {
                ipcgate::ca::lifecycle::check_key_matches(&key, &leaf)?;
            }
            let issued = ca.renew(&ca_dir, &leaf, new_key.then_some(key_type), ttl)?;
            issued.replace(&cert, new_key.then_some(key.as_path()))?;
            ca.record(&ca_dir, &issued.cert_der)?;
            println!(
                "renewed: {}{}",
                cert.display(),
                if new_key {
                    format!(" (new key: {})", key.display())
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Inspect { file, ca_dir, json }) => {
            let i = ipcgate::ca::inspect::inspect(&file, ca_dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!("file:        {}", i.file);
                println!(
                    "subject:     {}",
                    if i.subject.is_empty() {
                        "(empty)"
                    } else {
                        &i.subject
                    }
                );
                println!("issuer:      {}", i.issuer);
                println!(
                    "spiffe id:   {}",
                    i.spiffe_id.as_deref().unwrap_or("(none)")
                );
                println!("uri sans:    {:?}", i.uri_sans);
                println!("dns sans:    {:?}", i.dns_sans);
                if !i.ip_sans.is_empty() {
                    println!("ip sans:     {:?}", i.ip_sans);
                }
                println!("sha256:      {}", i.sha256);
                println!("serial:      {}", i.serial);
                println!(
                    "valid:       {} .. {}{}",
                    i.not_before,
                    i.not_after,
                    if i.expired { " (NOT VALID NOW)" } else { "" }
                );
                println!(
                    "purpose:     {:?}{}",
                    i.extended_key_usage,
                    if i.is_ca { " (CA)" } else { "" }
                );
                println!("key:         {}", i.key);
                if let Some(c) = i.chains_to_ca {
                    println!("issued by this CA: {}", if c { "yes" } else { "NO" });
                }
                if let Some(r) = i.revoked {
                    println!("revoked:     {}", if r { "YES" } else { "no" });
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Crl { ca_dir, ttl } => {
            let ca = Ca::load(&ca_dir)?;
            let crl = ca.reissue_crl(&ca_dir, ttl)?;
            let state = ipcgate::ca::lifecycle::load_state(&ca_dir)?;
            println!(
                "CRL #{} with {} revoked certificates, valid for {}: {}",
                state.crl_number,
                state.revoked.len(),
                humantime(ttl),
                crl.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Issue(a)) => {
            let ca = Ca::load(&a.ca_dir)?;
            let issued = ca.issue(&LeafSpec {
                spiffe: a.spiffe,
                dns: a.dns,
                cn: a.cn,
                client: a.client,
                server: a.server,
                ttl: a.ttl,
                validity: None,
                key_type: a.key_type,
            })?;
            let (c, k) = issued.save(&a.out, a.force)?;
            ca.record(&a.ca_dir, &issued.cert_der)?;
            println!("certificate: {}\nkey (0600): {}", c.display(), k.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Check { files }) => {
            if files.is_empty() {
                anyhow::bail!("give at least one policy file");
            }
            let mut ok = true;
            for f in &files {
                match ipcgate::policy::Policy::load(f) {
                    Ok(p) => {
                        let (d, a) = p.rule_counts();
                        println!(
                            "{}: ok: policy {:?} version {}, {d} deny rules, {a} allow rules",
                            f.display(),
                            p.name,
                            p.version
                        );
                        for line in p.summary() {
                            println!("  {line}");
                        }
                        if p.audit.any_logger() {
                            println!(
                                "  audit {:?} to{}{}",
                                p.audit.condition,
                                if p.audit.stdout { " stdout" } else { "" },
                                if p.audit.file { " [audit] file" } else { "" }
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Policy(PolicyCmd::Explain(a)) => explain(a),
        Cmd::Call(a) => runtime()?.block_on(call(a)),
        Cmd::Connect(a) => {
            init_tracing("info");
            let mode =
                ipcgate::config::parse_mode(&a.mode).map_err(|m| anyhow::anyhow!("--mode: {m}"))?;
            let roots = a.ca.as_deref().map(ipcgate::tls::load_roots).transpose()?;
            let sha256 = a
                .server_sha256
                .as_deref()
                .map(ipcgate::client::parse_fingerprint)
                .transpose()
                .map_err(|m| anyhow::anyhow!("--server-sha256: {m}"))?;
            let trust = ipcgate::client::ServerTrust {
                ca: roots,
                spiffe_id: a.server_spiffe,
                sha256,
            };
            let config = ipcgate::client::config_with(
                ipcgate::tls::load_certs(&a.cert)?,
                ipcgate::tls::load_key(&a.key)?,
                trust,
            )?;
            let target = ipcgate::client::Target {
                socket: unix_path(&a.gateway),
                server_name: a.server_name,
                config,
                server_uid: a.server_uid,
            };
            runtime()?.block_on(async {
                let sidecar = ipcgate::sidecar::Sidecar::bind(ipcgate::sidecar::SidecarConfig {
                    listen: unix_path(&a.listen),
                    mode,
                    gateway: target,
                })?;
                sidecar.run(shutdown_signal()).await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn explain(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    if let Err(why) = ipcgate::path::split(&a.method) {
        anyhow::bail!(
            "--method {:?}: {why}; the gateway answers such a call UNIMPLEMENTED before any policy runs",
            a.method
        );
    }
    let policy = ipcgate::policy::Policy::load(&a.policy)?;
    let chain = ipcgate::tls::load_certs(&a.cert)?;
    let cred = match (a.uid, a.gid) {
        (None, None) => None,
        (uid, gid) => Some(ipcgate::identity::PeerCred {
            uid,
            gid,
            pid: None,
            groups: Some(a.groups.clone()),
        }),
    };
    let peer = ipcgate::identity::Peer::new(&chain, cred, None)?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &a.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    let e = policy.explain(&a.method, &headers, &peer);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "policy {:?} (version {}), method {}",
        e.policy, e.version, e.method
    );
    println!(
        "client {} (URI SANs {:?}, DNS SANs {:?}, subject {:?}, uid {:?}, gid {:?}, groups {:?})",
        peer.principal(),
        peer.uris,
        peer.dns,
        peer.subject,
        a.uid,
        a.gid,
        a.groups
    );
    match (&e.rule, e.allowed) {
        (Some(r), true) => println!("decision: ALLOW by allow rule {r:?}"),
        (Some(r), false) => println!("decision: DENY by deny rule {r:?} (PERMISSION_DENIED)"),
        (None, _) => println!("decision: DENY, no allow rule matched (PERMISSION_DENIED)"),
    }
    for (kind, rules) in [("deny", &e.deny_rules), ("allow", &e.allow_rules)] {
        for r in rules.iter() {
            let verdict = if r.matched {
                "MATCHES"
            } else {
                "does not match"
            };
            println!("\n{kind} rule {:?}: {verdict}", r.name);
            for c in &r.conditions {
                println!(
                    "  [{}] {}: {}",
                    if c.met { "x" } else { " " },
                    c.field,
                    c.why
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn call(a: CallArgs) -> anyhow::Result<ExitCode> {
    use http_body_util::BodyExt;
    let body = decode_hex(&a.data_hex)?;
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    let cfg = ipcgate::client::config_from_files(&a.cert, &a.key, &a.ca)?;
    let tls = ipcgate::client::connect(&a.socket, &a.server_name, cfg).await?;
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{}", a.server_name, a.method))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &a.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = tx
        .send_request(req.body(http_body_util::Full::new(bytes::Bytes::from(framed)))?)
        .await?;
    let head = resp.headers().clone();
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |k: &str| {
        trailers
            .get(k)
            .or(head.get(k))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let status = get("grpc-status");
    let data = collected.to_bytes();
    println!("grpc-status: {status}");
    println!("grpc-message: {}", get("grpc-message"));
    println!("response bytes: {}", data.len());
    Ok(if status == "0" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn decode_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        anyhow::bail!("--data-hex must be an even number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| anyhow::anyhow!("--data-hex is not hex"))
        })
        .collect()
}

#[cfg(not(unix))]
async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(unix)]
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

//! `gateway.toml`: parsed strictly (unknown keys refused) and validated up front, so a
//! mistake stops start-up with the file, the line and the fix instead of surfacing as
//! a refused call later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::duration;

/// A validated gateway configuration. Relative paths are resolved against the
/// directory of the config file, so a config works wherever it is started from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages).
    pub source: PathBuf,
    /// Every socket the gateway listens on; all share the TLS setup, the policy
    /// and the routes.
    pub listen: Vec<Listen>,
    pub tls: Tls,
    pub policy: Policy,
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub audit: Audit,
    /// The admin endpoint: a Unix socket (or, on Windows, a named pipe).
    pub admin: Option<Listen>,
    /// Worker threads of the gateway's runtime.
    pub threads: usize,
    /// Longest busy-poll window of a client connection (zero: off); see
    /// [`crate::busy_poll`].
    pub busy_poll: Duration,
}

/// Where `ipcgate_file_logger` writes, and how much it may fall behind.
#[derive(Debug, Clone)]
pub struct Audit {
    /// JSON-lines audit file (opened append, created 0600).
    pub file: Option<PathBuf>,
    /// Events buffered for the writer; past this, events are dropped and counted.
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub at: ListenAt,
    /// Permission bits of the socket file. Connecting needs write permission, so
    /// this decides which local accounts may even start a handshake.
    pub mode: u32,
    /// Numeric group to own the socket (with a group-writable `mode`).
    pub group: Option<u32>,
    /// Security descriptor of a named pipe in SDDL; `None` is the default DACL
    /// of the pipe listener (the gateway's own account and SYSTEM only).
    pub sddl: Option<String>,
    /// Repair the socket-path `:authority` gRPC C-core and Netty clients send
    /// by default (see `authority.rs`).
    pub repair_authority: bool,
}

/// Where one listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAt {
    /// A Unix domain socket path the gateway creates.
    Uds(PathBuf),
    /// A socket systemd passes in, by its `FileDescriptorName=`.
    Systemd(String),
    /// A TCP address, for clients on other hosts (same mTLS and policy).
    Tcp(std::net::SocketAddr),
    /// A Windows named pipe, `\\.\pipe\name`.
    Pipe(String),
}

impl fmt::Display for ListenAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAt::Uds(p) => write!(f, "unix:{}", p.display()),
            ListenAt::Systemd(n) => write!(f, "systemd:{n}"),
            ListenAt::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAt::Pipe(p) => write!(f, "pipe:{p}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// CRLs (PEM or DER) from the CAs in `client_ca`.
    pub crl: Vec<PathBuf>,
    /// Refuse clients while a CRL is past its next-update (fail closed).
    pub crl_expired_deny: bool,
    /// Refuse clients whose issuer has no CRL configured (only when `crl` is set).
    pub revocation_unknown_deny: bool,
}

impl Tls {
    /// Just the three required files, no CRLs.
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Tls {
        Tls {
            cert,
            key,
            client_ca,
            crl: Vec::new(),
            crl_expired_deny: true,
            revocation_unknown_deny: true,
        }
    }

    /// Every file the TLS setup reads (for reload watching).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cert.clone(), self.key.clone(), self.client_ca.clone()];
        v.extend(self.crl.iter().cloned());
        v
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PathBuf,
    /// A dry-run policy: evaluated and counted on every call, never enforced.
    pub shadow_file: Option<PathBuf>,
    /// Reload the policy files when they change on disk.
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Full gRPC service name (`pkg.Service`) or `*` for the default route.
    pub service: String,
    pub backend: Backend,
}

/// Where a route's calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// h2c over a Unix domain socket.
    Unix(PathBuf),
    /// h2c over TCP, `host:port`.
    Tcp(String),
    /// h2c over a Windows named pipe.
    Pipe(String),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Unix(p) => write!(f, "unix:{}", p.display()),
            Backend::Tcp(a) => write!(f, "http://{a}"),
            Backend::Pipe(p) => write!(f, "pipe:{p}"),
        }
    }
}

impl Backend {
    /// Parses `unix:/path`, `unix:///path` or `http://host:port`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str, base: &Path) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("pipe:") {
            if cfg!(unix) {
                return Err(format!(
                    "{s:?}: named pipes are Windows-only (write \"unix:/run/app/echo.sock\")"
                ));
            }
            return Ok(Backend::Pipe(rest.to_owned()));
        }
        if s.starts_with("unix:") && cfg!(windows) {
            return Err(format!("{s:?}: Unix sockets are not dialed on Windows (write \"pipe:\\\\.\\pipe\\name\" or \"http://127.0.0.1:50051\")"));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!(
                    "{s:?} has no socket path (write \"unix:/run/app/echo.sock\")"
                ));
            }
            return Ok(Backend::Unix(base.join(path)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            let ok = authority
                .parse::<http::uri::Authority>()
                .ok()
                .filter(|a| a.port_u16().is_some() && !authority.contains('@'));
            return match ok {
                Some(_) => Ok(Backend::Tcp(authority.to_owned())),
                None => Err(format!(
                    "{s:?} is not host:port (write \"http://127.0.0.1:50051\")"
                )),
            };
        }
        if s.starts_with("https://") {
            return Err(format!(
                "{s:?}: TLS to backends is not supported yet; use h2c (\"http://host:port\") or a Unix socket (\"unix:/path\")"
            ));
        }
        Err(format!(
            "{s:?} is not a backend address (write \"unix:/run/app/echo.sock\" or \"http://127.0.0.1:50051\")"
        ))
    }
}

/// Resource limits; every default is the safe one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must finish the TLS handshake within this time or is dropped, so a
    /// stalled or silent client cannot hold a slot.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest request header block accepted, in bytes.
    pub max_header_list_size: u32,
    /// Calls in flight on one backend connection before another one is opened, so
    /// long streams cannot starve unary calls.
    pub backend_streams_per_connection: usize,
    /// Time for in-flight calls to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Client connections served at once; past this the gateway stops accepting
    /// until one closes (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// A connection with no call forwarded and none in flight for this long is
    /// closed (GOAWAY). Zero keeps idle connections open.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 200,
            max_header_list_size: 16 * 1024,
            backend_streams_per_connection: 100,
            drain_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// A config problem, with the file and (where known) the line.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListens,
    tls: RawTls,
    policy: RawPolicy,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    admin: Option<RawListen>,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    threads: Option<Spanned<usize>>,
    busy_poll: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    uds: Option<Spanned<String>>,
    systemd: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    pipe: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    sddl: Option<Spanned<String>>,
    repair_authority: Option<bool>,
    group: Option<Spanned<u32>>,
}

/// `[listen]` (one listener) or `[[listen]]` (several). Written by hand rather
/// than as an untagged enum, which would buffer the values and lose the spans
/// that put line numbers in error messages.
struct RawListens(Vec<RawListen>);

impl<'de> Deserialize<'de> for RawListens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawListens;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [listen] table or [[listen]] tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawListens, A::Error> {
                RawListen::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|l| RawListens(vec![l]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawListens, A::Error> {
                let mut v = Vec::new();
                while let Some(l) = seq.next_element()? {
                    v.push(l);
                }
                Ok(RawListens(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    client_ca: String,
    #[serde(default)]
    crl: Vec<String>,
    crl_expired: Option<Spanned<String>>,
    revocation_unknown: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: String,
    shadow_file: Option<String>,
    watch: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<String>,
    queue: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    service: Spanned<String>,
    backend: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<Spanned<String>>,
    max_concurrent_streams: Option<Spanned<u32>>,
    max_header_list_size: Option<Spanned<u32>>,
    backend_streams_per_connection: Option<Spanned<usize>>,
    drain_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout: Option<Spanned<String>>,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the line where known, and the fix.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            message: format!("cannot read config: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text as if read from `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the line where known, and the fix.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: file.clone(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message already carries the line, column and a caret excerpt.
            err(e.span(), e.message().to_owned() + &excerpt(text, e.span()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| base.join(p);

        let mut listen: Vec<Listen> = Vec::with_capacity(raw.listen.0.len());
        for (i, l) in raw.listen.0.iter().enumerate() {
            let key = if raw.listen.0.len() == 1 {
                "listen".to_owned()
            } else {
                format!("listen[{i}]")
            };
            let l = parse_listen(l, &key, &resolve).map_err(|(span, m)| err(span, m))?;
            if listen.iter().any(|x| x.at == l.at) {
                return Err(err(None, format!("{key}: {} is listed twice", l.at)));
            }
            listen.push(l);
        }
        if listen.is_empty() {
            return Err(err(
                None,
                "[listen] needs uds = \"/run/app/gateway.sock\" (or tcp, pipe, or systemd = \"<FileDescriptorName>\" under socket activation)".into(),
            ));
        }

        let mut routes: Vec<Route> = Vec::with_capacity(raw.route.len());
        for (i, r) in raw.route.iter().enumerate() {
            let service = r.service.get_ref();
            if let Err(msg) = crate::route::validate_service(service) {
                return Err(err(
                    Some(r.service.span()),
                    format!("route[{i}].service: {msg}"),
                ));
            }
            if routes.iter().any(|x| x.service == *service) {
                return Err(err(
                    Some(r.service.span()),
                    format!("route[{i}].service {service:?} has a route already (each service may appear once)"),
                ));
            }
            let backend = Backend::parse(r.backend.get_ref(), base)
                .map_err(|msg| err(Some(r.backend.span()), format!("route[{i}].backend: {msg}")))?;
            routes.push(Route {
                service: service.clone(),
                backend,
            });
        }
        if routes.is_empty() {
            return Err(err(
                None,
                "no [[route]] given: add one, e.g.\n[[route]]\nservice = \"*\"\nbackend = \"unix:/run/app/echo.sock\"".into(),
            ));
        }

        let mut limits = Limits::default();
        let l = &raw.limits;
        let dur = |v: &Option<Spanned<String>>, key: &str, min: Duration, dflt: Duration| match v {
            None => Ok(dflt),
            Some(s) => {
                let d = duration::parse(s.get_ref())
                    .map_err(|m| err(Some(s.span()), format!("limits.{key}: {m}")))?;
                if d < min {
                    return Err(err(
                        Some(s.span()),
                        format!("limits.{key} must be at least {min:?}"),
                    ));
                }
                Ok(d)
            }
        };
        limits.handshake_timeout = dur(
            &l.handshake_timeout,
            "handshake_timeout",
            Duration::from_millis(100),
            limits.handshake_timeout,
        )?;
        limits.drain_timeout = dur(
            &l.drain_timeout,
            "drain_timeout",
            Duration::ZERO,
            limits.drain_timeout,
        )?;
        limits.idle_timeout = dur(
            &l.idle_timeout,
            "idle_timeout",
            Duration::ZERO,
            limits.idle_timeout,
        )?;
        if let Some(v) = &l.max_concurrent_streams {
            if *v.get_ref() == 0 {
                return Err(err(
                    Some(v.span()),
                    "limits.max_concurrent_streams must be at least 1".into(),
                ));
            }
            limits.max_concurrent_streams = *v.get_ref();
        }
        if let Some(v) = &l.max_header_list_size {
            if *v.get_ref() < 1024 {
                return Err(err(
                    Some(v.span()),
                    "limits.max_header_list_size must be at least 1024".into(),
                ));
            }
            limits.max_header_list_size = *v.get_ref();
        }
        if let Some(v) = &l.max_connections {
            if *v.get_ref() == 0 {
                return Err(err(
                    Some(v.span()),
                    "limits.max_connections must be at least 1".into(),
                ));
            }
            limits.max_connections = *v.get_ref();
        }
        if let Some(v) = &l.backend_streams_per_connection {
            if *v.get_ref() == 0 {
                return Err(err(
                    Some(v.span()),
                    "limits.backend_streams_per_connection must be at least 1".into(),
                ));
            }
            limits.backend_streams_per_connection = *v.get_ref();
        }

        let deny_or_allow = |v: &Option<Spanned<String>>, key: &str| match v {
            None => Ok(true),
            Some(s) => match s.get_ref().as_str() {
                "deny" => Ok(true),
                "allow" => Ok(false),
                other => Err(err(
                    Some(s.span()),
                    format!("{key} = {other:?}: write \"deny\" (the default) or \"allow\""),
                )),
            },
        };
        let queue = match &raw.audit.queue {
            None => 8192,
            Some(q) if *q.get_ref() == 0 => {
                return Err(err(Some(q.span()), "audit.queue must be at least 1".into()))
            }
            Some(q) => *q.get_ref(),
        };
        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let l = parse_listen(a, "admin", &resolve).map_err(|(span, m)| err(span, m))?;
                // The admin endpoint has no TLS: only a local, permission-checked
                // socket may carry it.
                if matches!(l.at, ListenAt::Tcp(_) | ListenAt::Systemd(_))
                    || a.repair_authority.is_some()
                    || a.group.is_some()
                {
                    return Err(err(
                        None,
                        "[admin] takes uds = \"/run/app/ipcgate-admin.sock\" (pipe on Windows) and mode only: it has no TLS, so it is never served on TCP".into(),
                    ));
                }
                Some(l)
            }
        };
        let threads = match &raw.runtime.threads {
            None => default_threads(),
            Some(t) if *t.get_ref() == 0 => {
                return Err(err(
                    Some(t.span()),
                    "runtime.threads must be at least 1 (leave it out for half the cores)".into(),
                ))
            }
            Some(t) => *t.get_ref(),
        };
        let busy_poll = match &raw.runtime.busy_poll {
            None => Duration::ZERO,
            Some(v) => {
                let d = duration::parse(v.get_ref())
                    .map_err(|m| err(Some(v.span()), format!("runtime.busy_poll: {m}")))?;
                if !d.is_zero()
                    && !(crate::busy_poll::GROW_START..=crate::busy_poll::MAX).contains(&d)
                {
                    return Err(err(
                        Some(v.span()),
                        format!(
                            "runtime.busy_poll must be between {}us and {}us: shorter windows catch nothing, longer ones only spin through pauses no wake-up costs (typical: \"200us\"; \"0us\" or leaving it out is off)",
                            crate::busy_poll::GROW_START.as_micros(),
                            crate::busy_poll::MAX.as_micros()
                        ),
                    ));
                }
                d
            }
        };
        Ok(Config {
            threads,
            busy_poll,
            audit: Audit {
                file: raw.audit.file.as_deref().map(resolve),
                queue,
            },
            admin,
            source: path.to_owned(),
            listen,
            tls: Tls {
                cert: resolve(&raw.tls.cert),
                key: resolve(&raw.tls.key),
                client_ca: resolve(&raw.tls.client_ca),
                crl: raw.tls.crl.iter().map(|c| resolve(c)).collect(),
                crl_expired_deny: deny_or_allow(&raw.tls.crl_expired, "tls.crl_expired")?,
                revocation_unknown_deny: deny_or_allow(
                    &raw.tls.revocation_unknown,
                    "tls.revocation_unknown",
                )?,
            },
            policy: Policy {
                file: resolve(&raw.policy.file),
                shadow_file: raw.policy.shadow_file.as_deref().map(resolve),
                watch: raw.policy.watch.unwrap_or(true),
            },
            routes,
            limits,
        })
    }
}

type Span = Option<std::ops::Range<usize>>;

/// One listener: exactly one address, and only the options that apply to it.
fn parse_listen(
    l: &RawListen,
    key: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Listen, (Span, String)> {
    let given: Vec<(&str, &Spanned<String>)> = [
        ("uds", &l.uds),
        ("tcp", &l.tcp),
        ("pipe", &l.pipe),
        ("systemd", &l.systemd),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let (kind, value) = match given.as_slice() {
        [one] => *one,
        [] => {
            return Err((
                None,
                format!("{key} needs one address: uds = \"/run/app/gateway.sock\", tcp = \"0.0.0.0:8443\", pipe = '\\\\.\\pipe\\app' (Windows) or systemd = \"<FileDescriptorName>\""),
            ))
        }
        [_, (k, v), ..] => {
            return Err((
                Some(v.span()),
                format!("{key}.{k}: one address per listener (use [[listen]] tables for several listeners)"),
            ))
        }
    };
    let text = value.get_ref();
    let span = Some(value.span());
    if text.is_empty() {
        return Err((span, format!("{key}.{kind} is empty")));
    }
    let at = match kind {
        "uds" if cfg!(windows) => {
            return Err((span, format!("{key}.uds: Unix sockets are not served on Windows; use pipe = '\\\\.\\pipe\\name'")))
        }
        "uds" => ListenAt::Uds(resolve(text)),
        "systemd" if cfg!(windows) => {
            return Err((span, format!("{key}.systemd: socket activation is systemd's, not Windows'")))
        }
        "systemd" => ListenAt::Systemd(text.clone()),
        "tcp" => ListenAt::Tcp(text.parse().map_err(|_| {
            (span.clone(), format!("{key}.tcp = {text:?} is not an IP address and port (write e.g. \"127.0.0.1:8443\" or \"[::]:8443\")"))
        })?),
        _ if cfg!(unix) => {
            return Err((span, format!("{key}.pipe: named pipes are Windows-only; use uds = \"/run/app/gateway.sock\"")))
        }
        _ => {
            if !text.to_ascii_lowercase().starts_with(r"\\.\pipe\") || text.len() <= 9 {
                return Err((span, format!(r"{key}.pipe = {text:?} is not a local pipe name (write '\\.\pipe\name')")));
            }
            ListenAt::Pipe(text.clone())
        }
    };
    let file_backed = matches!(at, ListenAt::Uds(_));
    let mode = match &l.mode {
        None => 0o600,
        Some(m) if !file_backed => {
            return Err((
                Some(m.span()),
                format!("{key}.mode applies to uds listeners only"),
            ))
        }
        Some(m) => {
            parse_mode(m.get_ref()).map_err(|msg| (Some(m.span()), format!("{key}.mode: {msg}")))?
        }
    };
    let group = match &l.group {
        Some(g) if !file_backed => {
            return Err((
                Some(g.span()),
                format!("{key}.group applies to uds listeners only"),
            ))
        }
        g => g.as_ref().map(|g| *g.get_ref()),
    };
    let sddl = match &l.sddl {
        Some(s) if !matches!(at, ListenAt::Pipe(_)) => {
            return Err((
                Some(s.span()),
                format!("{key}.sddl applies to pipe listeners only"),
            ))
        }
        Some(s) if s.get_ref().is_empty() => {
            return Err((
                Some(s.span()),
                format!(
                "{key}.sddl is empty (leave it out for the default: this account and SYSTEM only)"
            ),
            ))
        }
        s => s.as_ref().map(|s| s.get_ref().clone()),
    };
    Ok(Listen {
        at,
        mode,
        group,
        sddl,
        repair_authority: l.repair_authority.unwrap_or(true),
    })
}

/// Half the cores, at least one: a local gateway shares its machine with the
/// clients and backends it connects, and on a 2-core machine one worker thread
/// spent about 30% less CPU per call than two (scripts/bench, docs/PERFORMANCE.md).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Parses an octal socket mode, refusing world-writable or owner-unwritable ones.
///
/// # Errors
/// What is wrong with it.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!("{s:?} is not an octal permission mode (write e.g. \"0600\" or \"0660\")")
        })?;
    if mode & 0o002 != 0 {
        return Err(format!(
            "{s:?} lets every local account connect; the gateway refuses world-writable sockets (use \"0660\" with listen.group to share)"
        ));
    }
    if mode & 0o200 == 0 {
        return Err(format!(
            "{s:?} leaves the owner without write permission, so nobody could connect"
        ));
    }
    Ok(mode)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn excerpt(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line = line_of(text, span.start);
    text.lines()
        .nth(line - 1)
        .map(|l| format!("\n  {line} | {l}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

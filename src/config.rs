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
    pub listen: Listen,
    pub tls: Tls,
    pub policy: Policy,
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub audit: Audit,
    pub admin: Option<Admin>,
}

/// Where `ipcgate_file_logger` writes, and how much it may fall behind.
#[derive(Debug, Clone)]
pub struct Audit {
    /// JSON-lines audit file (opened append, created 0600).
    pub file: Option<PathBuf>,
    /// Events buffered for the writer; past this, events are dropped and counted.
    pub queue: usize,
}

/// The admin socket: plain HTTP/1.1, protected by its file mode.
#[derive(Debug, Clone)]
pub struct Admin {
    pub uds: PathBuf,
    pub mode: u32,
}

#[derive(Debug, Clone)]
pub struct Listen {
    /// The socket path (empty when systemd passes the socket in).
    pub uds: PathBuf,
    /// Take the listening socket from systemd socket activation: the
    /// `FileDescriptorName=` of the socket unit.
    pub systemd: Option<String>,
    /// Permission bits of the socket file. Connecting needs write permission, so
    /// this decides which local accounts may even start a handshake.
    pub mode: u32,
    /// Numeric group to own the socket (with a group-writable `mode`).
    pub group: Option<u32>,
    /// Repair the socket-path `:authority` gRPC C-core and Netty clients send
    /// by default (see `authority.rs`).
    pub repair_authority: bool,
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
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Unix(p) => write!(f, "unix:{}", p.display()),
            Backend::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Backend {
    /// Parses `unix:/path`, `unix:///path` or `http://host:port`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str, base: &Path) -> Result<Self, String> {
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
    listen: RawListen,
    tls: RawTls,
    policy: RawPolicy,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    uds: Option<Spanned<String>>,
    systemd: Option<String>,
    mode: Option<Spanned<String>>,
    repair_authority: Option<bool>,
    group: Option<u32>,
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
struct RawAdmin {
    uds: String,
    mode: Option<Spanned<String>>,
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

        let mode = match &raw.listen.mode {
            None => 0o600,
            Some(m) => parse_mode(m.get_ref())
                .map_err(|msg| err(Some(m.span()), format!("listen.mode: {msg}")))?,
        };
        let uds = match (&raw.listen.uds, &raw.listen.systemd) {
            (Some(u), _) if u.get_ref().is_empty() => {
                return Err(err(
                    Some(u.span()),
                    "listen.uds is empty (write the socket path, e.g. \"/run/app/gateway.sock\")".into(),
                ))
            }
            (Some(u), None) => resolve(u.get_ref()),
            (Some(u), Some(_)) => {
                return Err(err(Some(u.span()), "give listen.uds or listen.systemd, not both".into()))
            }
            (None, Some(_)) => PathBuf::new(),
            (None, None) => {
                return Err(err(
                    None,
                    "[listen] needs uds = \"/run/app/gateway.sock\" (or systemd = \"<FileDescriptorName>\" under socket activation)".into(),
                ))
            }
        };

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
            Some(a) => Some(Admin {
                uds: resolve(&a.uds),
                mode: match &a.mode {
                    None => 0o600,
                    Some(m) => parse_mode(m.get_ref())
                        .map_err(|msg| err(Some(m.span()), format!("admin.mode: {msg}")))?,
                },
            }),
        };
        Ok(Config {
            audit: Audit {
                file: raw.audit.file.as_deref().map(resolve),
                queue,
            },
            admin,
            source: path.to_owned(),
            listen: Listen {
                uds,
                systemd: raw.listen.systemd.clone(),
                repair_authority: raw.listen.repair_authority.unwrap_or(true),
                mode,
                group: raw.listen.group,
            },
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

//! A small local CA with rcgen, so a user needs no openssl recipe: a CA, client
//! and server leaves with SPIFFE/DNS names, random serials, keys written 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

/// Default lifetimes: short for clients (revocation matters less when certs die
/// daily), longer for servers and the CA.
pub const CLIENT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const SERVER_TTL: Duration = Duration::from_secs(90 * 86_400);
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Backdating of `not_before`, so a peer whose clock is slightly behind still
/// accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists already (pass --force to overwrite it)")]
    Exists { path: PathBuf },
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub mod inspect;
pub mod lifecycle;

pub use lifecycle::{Reason, CRL_TTL};

/// Key algorithm for new keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: supported by every TLS stack.
    #[default]
    EcdsaP256,
    Ed25519,
}

impl KeyType {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// Generates a fresh key of this type.
    ///
    /// # Errors
    /// Only if the crypto provider fails.
    pub fn generate(self) -> Result<KeyPair, CaError> {
        Ok(KeyPair::generate_for(self.alg())?)
    }
}

/// A loaded or freshly made CA.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    pub config: CaConfig,
}

/// `ca.toml`: the CA's own rules.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// SPIFFE IDs this CA signs must be in this trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    pub spiffe: Vec<String>,
    pub dns: Vec<String>,
    pub cn: Option<String>,
    /// clientAuth EKU.
    pub client: bool,
    /// serverAuth EKU.
    pub server: bool,
    /// Lifetime from now; `None` takes the default for the kind.
    pub ttl: Option<Duration>,
    /// Explicit validity, overriding `ttl` (tests make expired certs with it).
    pub validity: Option<(OffsetDateTime, OffsetDateTime)>,
    pub key_type: KeyType,
}

/// A certificate and its private key, PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl Ca {
    /// Makes a new self-signed CA in memory.
    ///
    /// # Errors
    /// Only if the crypto provider fails.
    pub fn generate(cn: &str, ttl: Duration, key_type: KeyType) -> Result<Ca, CaError> {
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = later(now, ttl)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            config: CaConfig::default(),
        })
    }

    /// Loads `ca.pem` and `ca.key` from a CA directory.
    ///
    /// # Errors
    /// Missing or unreadable files, with the path and what to run.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let hint = |path: &Path, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CaError::BadFile {
                    path: path.to_owned(),
                    msg: format!(
                        "not found (run `ipcgate ca init --dir {}` first)",
                        dir.display()
                    ),
                }
            } else {
                CaError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        };
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| hint(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| hint(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadFile {
            path: key_path.clone(),
            msg: format!("not a usable private key: {e}"),
        })?;
        use rustls::pki_types::pem::PemObject;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::BadFile {
                path: cert_path.clone(),
                msg: format!("no PEM certificate: {e}"),
            })?;
        let matches = x509_parser::parse_x509_certificate(cert_der.as_ref()).is_ok_and(|(_, c)| {
            c.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        });
        if !matches {
            return Err(CaError::BadFile {
                path: key_path,
                msg: format!(
                    "this key does not belong to {} (restore the CA's own key, or make a new CA with `ipcgate ca init --force`)",
                    cert_path.display()
                ),
            });
        }
        let toml_path = dir.join("ca.toml");
        let config = match std::fs::read_to_string(&toml_path) {
            Ok(text) => toml::from_str(&text).map_err(|e| CaError::BadFile {
                path: toml_path.clone(),
                msg: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CaConfig::default(),
            Err(e) => {
                return Err(CaError::Io {
                    path: toml_path,
                    source: e,
                })
            }
        };
        Ok(Ca {
            cert_der,
            cert_pem,
            key,
            config,
        })
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir`.
    ///
    /// # Errors
    /// Existing files without `force`, or I/O errors, with the path.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| CaError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
        let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
        // All three or none: a refused init must not leave a new key beside an
        // old certificate, which every later leaf and CRL would be signed with.
        if !force {
            for p in [&k, &c, &dir.join("ca.toml")] {
                if std::fs::symlink_metadata(p).is_ok() {
                    return Err(CaError::Exists { path: p.clone() });
                }
            }
        }
        write_file(&k, self.key.serialize_pem().as_bytes(), 0o600, force)?;
        write_file(&c, self.cert_pem.as_bytes(), 0o644, force)?;
        let text = toml::to_string(&self.config).map_err(|e| CaError::Invalid(e.to_string()))?;
        write_file(&dir.join("ca.toml"), text.as_bytes(), 0o644, force)?;
        Ok((c, k))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CaError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// Issues a leaf certificate with a fresh key.
    ///
    /// # Errors
    /// Invalid names (a SPIFFE ID that is not `spiffe://…` or outside the CA's
    /// trust domain, a bad DNS name), no name at all, or no purpose.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, CaError> {
        let names = Names {
            spiffe: spec.spiffe.clone(),
            dns: spec.dns.clone(),
            ips: Vec::new(),
        };
        // Without --cn the CN is the first DNS name (what a TLS client that
        // still reads CNs expects). Only here, the operator's own `cert issue`:
        // a CSR's or a renewal's CN is never derived from its names.
        let cn = spec.cn.as_ref().or(names.dns.first());
        let params = self.leaf_params(
            &names,
            cn.map(String::as_str),
            spec.client,
            spec.server,
            spec.validity,
            spec.ttl,
        )?;
        let key = spec.key_type.generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// The parameters of every leaf this CA signs: names checked against the
    /// CA's rules, never a CA, EKU and validity as asked, a fresh random serial.
    pub(crate) fn leaf_params(
        &self,
        names: &Names,
        cn: Option<&str>,
        client: bool,
        server: bool,
        validity: Option<(OffsetDateTime, OffsetDateTime)>,
        ttl: Option<Duration>,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        // An X509-SVID carries exactly one SPIFFE ID. With two, a policy
        // principal could match the second while logs and XFCC name the first.
        if names.spiffe.len() > 1 {
            return Err(CaError::Invalid(format!(
                "one SPIFFE ID per certificate (X509-SVID), not {}: {}",
                names.spiffe.len(),
                names.spiffe.join(", ")
            )));
        }
        for id in &names.spiffe {
            self.check_spiffe(id)?;
            let uri = id
                .clone()
                .try_into()
                .map_err(|_| CaError::Invalid(format!("SPIFFE ID {id:?} is not ASCII")))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        for name in &names.dns {
            // A wildcard only as a whole leftmost label under at least two
            // more (`*.svc.example.org`): a bare `*` or `*.org` would vouch
            // for names no one here owns.
            // Labels are never empty: `*.org.` (absolute) or `*..org` would
            // slip past the label count.
            let plain = name.strip_prefix("*.").unwrap_or(name);
            if name.len() > 253
                || (plain.len() != name.len() && plain.split('.').count() < 2)
                || plain.split('.').any(|label| {
                    label.is_empty()
                        || label.len() > 63
                        || !label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return Err(CaError::Invalid(format!("{name:?} is not a DNS name")));
            }
            // In lowercase: DNS ignores case, but policy compares names as
            // written, so `ADMIN.example.org` would dodge a deny rule on
            // `admin.example.org`.
            let dns = name
                .to_ascii_lowercase()
                .try_into()
                .map_err(|_| CaError::Invalid(format!("{name:?} is not a DNS name")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        for ip in &names.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if params.subject_alt_names.is_empty() && cn.is_none() {
            return Err(CaError::Invalid(
                "a certificate needs a name: give --spiffe, --dns or --cn".into(),
            ));
        }
        if !client && !server {
            return Err(CaError::Invalid(
                "say what the certificate is for: --client, --server, or both".into(),
            ));
        }
        // The CN is exactly the one approved (`issue` fills in its DNS name).
        // It is never derived from a SPIFFE ID: `spiffe://td/ns/x/admin` must
        // not come out as `CN=admin` and satisfy a principal meant for someone
        // else. With no CN the subject is empty and rcgen marks the SAN
        // extension critical (RFC 5280 §4.2.1.6).
        params.distinguished_name = match cn {
            Some(cn) => dn(cn),
            None => DistinguishedName::new(),
        };
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        let (nb, na) = match validity {
            Some(v) => v,
            None => {
                let ttl = ttl.unwrap_or(if server { SERVER_TTL } else { CLIENT_TTL });
                (now - BACKDATE, later(now, ttl)?)
            }
        };
        // A leaf never outlives its CA, and an expired CA signs nothing.
        let ca_end = x509_parser::parse_x509_certificate(self.cert_der.as_ref())
            .map(|(_, c)| c.validity().not_after.to_datetime())
            .map_err(|e| CaError::Invalid(format!("the CA certificate cannot be read: {e}")))?;
        if ca_end <= now {
            return Err(CaError::Invalid(format!(
                "this CA expired at {ca_end}: it signs nothing more (make a new one with `ipcgate ca init --force` and move the clients to it)"
            )));
        }
        params.not_before = nb;
        params.not_after = na.min(ca_end);
        Ok(params)
    }

    /// A SPIFFE ID must be `spiffe://<trust domain>/<path>` and, when the CA has
    /// a trust domain, inside it.
    fn check_spiffe(&self, id: &str) -> Result<(), CaError> {
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return Err(CaError::Invalid(format!(
                "{id:?} is not a SPIFFE ID (write spiffe://trust-domain/path)"
            )));
        };
        // The SPIFFE ID spec: a trust domain of [a-z0-9._-], then path
        // segments of [A-Za-z0-9._-], none empty, "." or "..", and no
        // trailing '/'. Anything else one backend normalises and another does
        // not, so two IDs could name one workload.
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or("");
        let ok_td = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
            });
        let ok_path = parts.all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        });
        if !ok_td || !ok_path {
            return Err(CaError::Invalid(format!(
                "{id:?} is not a valid SPIFFE ID (a lowercase trust domain, then path segments of letters, digits, '.', '-' and '_', none empty, \".\" or \"..\", and no trailing '/')"
            )));
        }
        if let Some(want) = &self.config.trust_domain {
            if td != want {
                return Err(CaError::Invalid(format!(
                    "{id:?} is outside this CA's trust domain {want:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The names a leaf certificate carries.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub spiffe: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

impl Issued {
    /// Writes `<out>.pem` (0644) and `<out>.key` (0600).
    ///
    /// # Errors
    /// Existing files without `force`, or I/O errors, with the path.
    pub fn save(&self, out: &Path, force: bool) -> Result<(PathBuf, PathBuf), CaError> {
        let c = with_ext(out, "pem");
        let k = with_ext(out, "key");
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| CaError::Io {
                path: parent.to_owned(),
                source: e,
            })?;
        }
        write_file(&k, self.key_pem.as_bytes(), 0o600, force)?;
        write_file(&c, self.cert_pem.as_bytes(), 0o644, force)?;
        Ok((c, k))
    }
}

impl Issued {
    /// Writes only `<out>.pem` (a signed CSR: the key stays with the requester).
    ///
    /// # Errors
    /// An existing file without `force`, or I/O.
    pub fn save_cert(&self, out: &Path, force: bool) -> Result<PathBuf, CaError> {
        let c = with_ext(out, "pem");
        write_file(&c, self.cert_pem.as_bytes(), 0o644, force)?;
        Ok(c)
    }

    /// Replaces a certificate (and, with a new key, its key) in place, each by
    /// atomic rename so a gateway watching the files never reads half of one.
    /// The key is written first: a reader never sees a new cert with the old key.
    ///
    /// # Errors
    /// I/O.
    pub fn replace(&self, cert: &Path, key: Option<&Path>) -> Result<(), CaError> {
        if let Some(k) = key {
            write_atomic(k, self.key_pem.as_bytes(), 0o600)?;
        }
        write_atomic(cert, self.cert_pem.as_bytes(), 0o644)
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run as root, gives `f` (a file just made in `dir`) to the directory's
/// owner and group, so the account that owns the CA directory can go on
/// writing it. Best effort: a failure leaves it root's, as before.
#[cfg(unix)]
pub(crate) fn give_to_dir_owner(f: &std::fs::File, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return;
    }
    if let (Ok(d), Ok(m)) = (std::fs::metadata(dir), f.metadata()) {
        if (m.uid(), m.gid()) != (d.uid(), d.gid()) {
            let _ = std::os::unix::fs::fchown(f, Some(d.uid()), Some(d.gid()));
        }
    }
}

/// `now + ttl`, or an error naming a lifetime too long to represent (a
/// `--ttl` of centuries would otherwise overflow).
pub(crate) fn later(now: OffsetDateTime, ttl: Duration) -> Result<OffsetDateTime, CaError> {
    time::Duration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| CaError::Invalid(format!("a lifetime of {ttl:?} is out of range")))
}

fn with_ext(out: &Path, ext: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 127 random bits, positive and never zero. rcgen's default serial is derived from
/// the key, which would make revocation by serial ambiguous after a re-issue.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Invalid("no randomness".into()))?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

/// Creates a file with `mode`; refuses to replace one unless `force`. Key files are
/// created 0600 from the first byte, never chmod-ed after being written. With
/// `force` the file is replaced by rename: never written through a symlink
/// planted where it was, and never left truncated by a crash.
#[cfg_attr(not(unix), allow(unused_variables))]
fn write_file(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<(), CaError> {
    if force {
        return write_atomic(path, data, mode);
    }
    let mut opts = OpenOptions::new();
    opts.write(true);
    // On Windows the file takes its directory's ACL: keep keys in a private directory.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    opts.create_new(true);
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CaError::Exists {
                path: path.to_owned(),
            }
        } else {
            CaError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    f.write_all(data).map_err(|e| CaError::Io {
        path: path.to_owned(),
        source: e,
    })
}

/// Writes a file by rename, so a reader (the gateway's watcher) never sees it
/// half written.
///
/// A file it replaces passes on its owner and group permissions (not more
/// for others than `mode`): a key the gateway's account reads through its
/// group (`root:ipcgate 0640`) stays readable by it after `sudo ipcgate cert
/// renew --new-key`, instead of coming back `root:root 0600` and failing the
/// next reload.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".ipcgate-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    let mut tmp = builder.tempfile_in(dir).map_err(|e| CaError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    #[cfg(unix)]
    if let Some(old) = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file()) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let io = |e| CaError::Io {
            path: path.to_owned(),
            source: e,
        };
        let f = tmp.as_file();
        let mine = f.metadata().map_err(io)?;
        // Only root can give a file away; another account replacing a file
        // it does not own makes it its own, as a plain rename would.
        if is_root() && (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
            std::os::unix::fs::fchown(f, Some(old.uid()), Some(old.gid())).map_err(|e| {
                CaError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot give the new file the old one's owner {}:{} ({e}); run as root or as that account",
                            old.uid(),
                            old.gid()
                        ),
                    ),
                }
            })?;
        }
        let keep = (old.mode() & 0o770) | (mode & 0o007);
        f.set_permissions(std::fs::Permissions::from_mode(keep))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| CaError::Io {
            path: path.to_owned(),
            source: e,
        })?;
    tmp.persist(path).map_err(|e| CaError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

//! The rest of a certificate's life at the CA: signing CSRs, revoking, CRLs,
//! renewing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Ca, CaError, KeyType, Names};
use crate::identity::hex;

/// Default CRL lifetime: re-issue (`ipcgate crl`) before it passes.
pub const CRL_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The shortest CRL lifetime issued.
pub const MIN_CRL_TTL: Duration = Duration::from_secs(3600);

/// Why a certificate is revoked (RFC 5280 reason codes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    #[default]
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    fn code(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate in `revoked.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
    pub reason: Reason,
    pub subject: String,
    #[serde(default)]
    pub names: Vec<String>,
    /// For a key compromise: SHA-256 of the key (its SubjectPublicKeyInfo),
    /// which this CA then never certifies again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

/// One line of `issued.jsonl`: what `ipcgate cert issue`, `sign` and `renew`
/// certified, so that revoking a certificate for a key compromise revokes
/// every other one carrying that key (a renewal keeps the key by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub serial: String,
    pub key_sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    pub subject: String,
}

/// What a revocation did: the CRL written, and the other certificates it
/// revoked with the one named (same key, for a key compromise).
#[derive(Debug)]
pub struct Revocation {
    pub crl: PathBuf,
    pub also: Vec<String>,
}

/// `revoked.json`: what this CA has revoked, and the last CRL number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationState {
    pub crl_number: u64,
    pub revoked: Vec<Revoked>,
}

/// A leaf certificate read back from a file, with what the CA needs of it.
pub struct LeafInfo {
    pub der: CertificateDer<'static>,
    pub serial_hex: String,
    pub subject: String,
    pub cn: Option<String>,
    pub names: Names,
    pub client: bool,
    pub server: bool,
    pub spki: Vec<u8>,
}

/// Reads the first certificate of a PEM file.
///
/// # Errors
/// Unreadable file or no certificate.
pub fn read_leaf(path: &Path) -> Result<LeafInfo, CaError> {
    let der = CertificateDer::from_pem_file(path).map_err(|e| CaError::BadFile {
        path: path.to_owned(),
        msg: format!("no PEM certificate: {e}"),
    })?;
    leaf_info(der).map_err(|msg| CaError::BadFile {
        path: path.to_owned(),
        msg,
    })
}

/// What the CA needs of a certificate it holds in memory (one it just made).
///
/// # Errors
/// The certificate cannot be parsed.
pub fn leaf_info(der: CertificateDer<'static>) -> Result<LeafInfo, String> {
    let (_, c) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Names::default();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => names.spiffe.push((*u).to_owned()),
                GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_from(b) {
                        names.ips.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let (client, server) = match c.extended_key_usage() {
        Ok(Some(eku)) => (eku.value.client_auth, eku.value.server_auth),
        _ => (false, false),
    };
    let info = LeafInfo {
        serial_hex: hex(c.raw_serial()),
        subject: crate::identity::rfc4514(c.subject()),
        cn: c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned),
        names,
        client,
        server,
        spki: c.public_key().raw.to_vec(),
        der: der.clone(),
    };
    Ok(info)
}

/// Checks that a key file holds the private key of `leaf`.
///
/// # Errors
/// Unreadable key, or a key for another certificate.
pub fn check_key_matches(key: &Path, leaf: &LeafInfo) -> Result<(), CaError> {
    use rcgen::PublicKeyData;
    let pem = std::fs::read_to_string(key).map_err(|e| CaError::Io {
        path: key.to_owned(),
        source: e,
    })?;
    let kp = rcgen::KeyPair::from_pem(&pem).map_err(|e| CaError::BadFile {
        path: key.to_owned(),
        msg: format!("not a usable private key: {e}"),
    })?;
    if kp.subject_public_key_info() != leaf.spki {
        return Err(CaError::BadFile {
            path: key.to_owned(),
            msg: "this key does not belong to the certificate (pass the matching --key, or --new-key)".into(),
        });
    }
    Ok(())
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

impl Ca {
    /// Whether this CA signed `der` (issuer name and signature).
    pub fn issued(&self, der: &CertificateDer<'_>) -> bool {
        let (Ok((_, leaf)), Ok((_, ca))) = (
            X509Certificate::from_der(der.as_ref()),
            X509Certificate::from_der(self.cert_der().as_ref()),
        ) else {
            return false;
        };
        leaf.issuer().as_raw() == ca.subject().as_raw()
            && leaf.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Signs a CSR. The CA decides what matters: never a CA, EKU, validity and
    /// serial are its own; names come from the CSR only if they pass the CA's
    /// rules; the subject is the CA's too: a CN only as `cn` approves it. A CN
    /// kept because it was one of the CSR's names let `DNS:admin` bring
    /// `CN=admin`, which a subject principal takes for the operator's word.
    ///
    /// # Errors
    /// A bad CSR signature, a CSR asking to be a CA, a name the CA refuses, an
    /// unsupported key.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        client: bool,
        server: bool,
        ttl: Option<Duration>,
        cn: Option<&str>,
    ) -> Result<super::Issued, CaError> {
        let der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(|e| {
                    CaError::Invalid(format!(
                        "not a PEM CSR (-----BEGIN CERTIFICATE REQUEST-----): {e}"
                    ))
                })?;
        let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CaError::Invalid(format!("cannot parse the CSR: {e}")))?;
        csr.verify_signature().map_err(|_| {
            CaError::Invalid("the CSR's signature does not verify (was it altered?)".into())
        })?;
        let mut names = Names::default();
        for ext in csr.requested_extensions().into_iter().flatten() {
            use x509_parser::extensions::ParsedExtension;
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CaError::Invalid(
                        "the CSR asks for a CA certificate (basicConstraints CA:TRUE); this CA only signs leaf certificates".into(),
                    ))
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::URI(u) => names.spiffe.push((*u).to_owned()),
                            GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                            GeneralName::IPAddress(b) => names.ips.push(ip_from(b).ok_or_else(|| {
                                CaError::Invalid("the CSR has a malformed IP address SAN".into())
                            })?),
                            other => {
                                return Err(CaError::Invalid(format!(
                                    "the CSR asks for a SAN this CA does not issue: {other} (allowed: SPIFFE URI, DNS, IP)"
                                )))
                            }
                        }
                    }
                }
                // Key usage, EKU and anything else the requester asked for are
                // the CA's to decide, not the CSR's.
                _ => {}
            }
        }
        let info = &csr.certification_request_info;
        let csr_cn = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let cn = match (cn, csr_cn) {
            (Some(approved), _) => Some(approved.to_owned()),
            (None, None) => None,
            (None, Some(asked)) => {
                return Err(CaError::Invalid(format!(
                    "the CSR asks for CN={asked:?}; the CA sets a CN only when you approve it: add --cn {asked:?}, or leave the CN out of the CSR (its names go in the SANs)"
                )));
            }
        };
        let params = self.leaf_params(&names, cn.as_deref(), client, server, None, ttl)?;
        let spki = SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|_| {
            CaError::Invalid(
                "the CSR's key type is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)"
                    .into(),
            )
        })?;
        let cert = params.signed_by(&spki, &self.issuer()?)?;
        Ok(super::Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            cert_der: cert.der().clone(),
        })
    }

    /// Renews a certificate this CA issued: same names, CN and purpose, new
    /// validity and serial; the same key unless a new one is given.
    ///
    /// # Errors
    /// Not issued by this CA, or revoked.
    pub fn renew(
        &self,
        dir: &Path,
        old: &LeafInfo,
        new_key: Option<KeyType>,
        ttl: Option<Duration>,
    ) -> Result<super::Issued, CaError> {
        if !self.issued(&old.der) {
            return Err(CaError::Invalid(
                "this certificate was not issued by this CA".into(),
            ));
        }
        if let Some(r) = load_state(dir)?
            .revoked
            .iter()
            .find(|r| r.serial == old.serial_hex)
        {
            return Err(CaError::Invalid(format!(
                "this certificate (serial {}) is revoked ({:?}); issue a new one instead",
                r.serial, r.reason
            )));
        }
        if new_key.is_none() {
            check_key(dir, &old.spki)?;
        }
        let params = self.leaf_params(
            &old.names,
            old.cn.as_deref(),
            old.client,
            old.server,
            None,
            ttl,
        )?;
        match new_key {
            Some(kt) => {
                let key = kt.generate()?;
                let cert = params.signed_by(&key, &self.issuer()?)?;
                Ok(super::Issued {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                    cert_der: cert.der().clone(),
                })
            }
            None => {
                let spki = SubjectPublicKeyInfo::from_der(&old.spki).map_err(|e| {
                    CaError::Invalid(format!("the certificate's key cannot be reused: {e}"))
                })?;
                let cert = params.signed_by(&spki, &self.issuer()?)?;
                Ok(super::Issued {
                    cert_pem: cert.pem(),
                    key_pem: String::new(),
                    cert_der: cert.der().clone(),
                })
            }
        }
    }

    /// Records a revocation and writes a fresh CRL.
    ///
    /// # Errors
    /// Not issued by this CA, or I/O.
    ///
    /// For a key compromise every other unexpired certificate `issued.jsonl`
    /// records with the same key is revoked too, and the key is never
    /// certified again (`cert sign`, `cert renew`).
    pub fn revoke(
        &self,
        dir: &Path,
        leaf: &LeafInfo,
        reason: Reason,
        crl_ttl: Duration,
    ) -> Result<Revocation, CaError> {
        if leaf.der == *self.cert_der() {
            return Err(CaError::Invalid(
                "this is the CA's own certificate: a CA cannot revoke itself (take it out of every client_ca bundle and make a new CA)".into(),
            ));
        }
        if !self.issued(&leaf.der) {
            return Err(CaError::Invalid(
                "this certificate was not issued by this CA (its CRL could not revoke it)".into(),
            ));
        }
        let _lock = lock_dir(dir)?;
        let mut state = load_state(dir)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let key = (reason == Reason::KeyCompromise).then(|| key_sha256(&leaf.spki));
        if let Some(r) = state
            .revoked
            .iter_mut()
            .find(|r| r.serial == leaf.serial_hex)
        {
            // Revoked before for another reason, its key now reported
            // compromised: the key is never certified again either.
            if key.is_some() {
                r.reason = reason;
                r.key_sha256.clone_from(&key);
            }
        } else {
            let mut names = leaf.names.spiffe.clone();
            names.extend(leaf.names.dns.iter().cloned());
            state.revoked.push(Revoked {
                serial: leaf.serial_hex.clone(),
                revoked_at: now,
                reason,
                subject: leaf.subject.clone(),
                names,
                key_sha256: key.clone(),
            });
        }
        let mut also = Vec::new();
        if let Some(k) = &key {
            for r in load_issued(dir)? {
                if r.key_sha256 == *k
                    && r.not_after > now
                    && !state.revoked.iter().any(|x| x.serial == r.serial)
                {
                    also.push(r.serial.clone());
                    state.revoked.push(Revoked {
                        serial: r.serial,
                        revoked_at: now,
                        reason,
                        subject: r.subject,
                        names: Vec::new(),
                        key_sha256: None,
                    });
                }
            }
        }
        let crl = self.write_crl(dir, &mut state, crl_ttl)?;
        Ok(Revocation { crl, also })
    }

    /// Appends a certificate this CA just made to `issued.jsonl`.
    ///
    /// # Errors
    /// The certificate cannot be read, or I/O.
    pub fn record(&self, dir: &Path, der: &CertificateDer<'_>) -> Result<(), CaError> {
        let (_, c) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CaError::Invalid(format!("cannot read the certificate made: {e}")))?;
        let line = IssuedRecord {
            serial: hex(c.raw_serial()),
            key_sha256: key_sha256(c.public_key().raw),
            not_after: c.validity().not_after.timestamp(),
            subject: crate::identity::rfc4514(c.subject()),
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| CaError::Invalid(e.to_string()))?;
        text.push(b'\n');
        let _lock = lock_dir(dir)?;
        let path = dir.join("issued.jsonl");
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o644).custom_flags(libc::O_NOFOLLOW);
        }
        use std::io::Write as _;
        let mut f = opts.open(&path).map_err(|e| CaError::Io {
            path: path.clone(),
            source: e,
        })?;
        // Made by root (`sudo ipcgate cert issue`) in a directory another
        // account owns: that account must go on appending to it.
        #[cfg(unix)]
        super::give_to_dir_owner(&f, dir);
        f.write_all(&text)
            .map_err(|e| CaError::Io { path, source: e })
    }

    /// Issues a new CRL from `revoked.json` (next CRL number) and writes
    /// `ca.crl` atomically.
    ///
    /// # Errors
    /// I/O, or the CA key cannot sign CRLs.
    pub fn reissue_crl(&self, dir: &Path, crl_ttl: Duration) -> Result<PathBuf, CaError> {
        let _lock = lock_dir(dir)?;
        let mut state = load_state(dir)?;
        self.write_crl(dir, &mut state, crl_ttl)
    }

    fn write_crl(
        &self,
        dir: &Path,
        state: &mut RevocationState,
        ttl: Duration,
    ) -> Result<PathBuf, CaError> {
        if ttl < MIN_CRL_TTL {
            return Err(CaError::Invalid(format!(
                "a CRL valid for {ttl:?} goes stale before it can be distributed, and with crl_expired = \"deny\" (the default) the gateway then refuses this CA's clients: give it an hour or more"
            )));
        }
        let now = OffsetDateTime::now_utc();
        let next_update = super::later(now, ttl)?;
        state.crl_number += 1;
        let mut revoked = Vec::with_capacity(state.revoked.len());
        for r in &state.revoked {
            let serial = unhex(&r.serial).ok_or_else(|| {
                CaError::Invalid(format!("revoked.json: bad serial {:?}", r.serial))
            })?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at).unwrap_or(now),
                reason_code: Some(r.reason.code()),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::from_secs(60),
            next_update,
            crl_number: SerialNumber::from_slice(&state.crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        let pem = crl.pem()?;
        // The record first: if the CRL's write then fails, the next `ipcgate
        // crl` still has the revocation, and a fresh number for it.
        let json = serde_json::to_vec_pretty(state).map_err(|e| CaError::Invalid(e.to_string()))?;
        super::write_atomic(&dir.join("revoked.json"), &json, 0o644)?;
        let path = dir.join("ca.crl");
        super::write_atomic(&path, pem.as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// Reads `revoked.json` (empty state if absent).
///
/// # Errors
/// Unreadable or corrupt file.
pub fn load_state(dir: &Path) -> Result<RevocationState, CaError> {
    let p = dir.join("revoked.json");
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| CaError::BadFile {
            path: p,
            msg: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationState::default()),
        Err(e) => Err(CaError::Io { path: p, source: e }),
    }
}

/// SHA-256 of a SubjectPublicKeyInfo, lowercase hex.
fn key_sha256(spki: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki).as_ref())
}

/// Refuses a key this CA revoked a certificate of for a key compromise.
///
/// # Errors
/// The key is compromised, or `revoked.json` cannot be read.
pub fn check_key(dir: &Path, spki: &[u8]) -> Result<(), CaError> {
    let k = key_sha256(spki);
    match load_state(dir)?
        .revoked
        .iter()
        .find(|r| r.key_sha256.as_deref() == Some(k.as_str()))
    {
        Some(r) => Err(CaError::Invalid(format!(
            "this key was reported compromised (certificate serial {} revoked for it): it is never certified again; make a new key",
            r.serial
        ))),
        None => Ok(()),
    }
}

/// Reads `issued.jsonl` (nothing if absent).
fn load_issued(dir: &Path) -> Result<Vec<IssuedRecord>, CaError> {
    let p = dir.join("issued.jsonl");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CaError::Io { path: p, source: e }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| CaError::BadFile {
                path: p.clone(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Holds a lock on the CA directory itself (exclusively, waiting for it)
/// while `revoked.json` is read, changed and written: a `cert revoke` and an
/// `ipcgate crl` from cron at the same moment would otherwise each write what
/// they read, and the one that read first would drop the other's revocation
/// from the next CRL. The directory, not a lock file: a file the first
/// account to lock created could shut out the next (root's `sudo ipcgate
/// cert revoke`, then the CA account's cron job).
#[cfg(unix)]
fn lock_dir(dir: &Path) -> Result<std::fs::File, CaError> {
    let io = |e| CaError::Io {
        path: dir.to_owned(),
        source: e,
    };
    let f = std::fs::File::open(dir).map_err(io)?;
    f.lock().map_err(io)?;
    Ok(f)
}

/// Windows cannot open a directory as a file: a lock file there (its ACL
/// comes from the directory).
#[cfg(not(unix))]
fn lock_dir(dir: &Path) -> Result<std::fs::File, CaError> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CaError::Io {
            path: path.clone(),
            source: e,
        })?;
    f.lock().map_err(|e| CaError::Io { path, source: e })?;
    Ok(f)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

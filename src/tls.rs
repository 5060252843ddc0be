//! rustls configuration from PEM files: TLS 1.3 only, ALPN `h2` only, client
//! certificates required and verified against the configured CA bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config;

mod pathlen;
pub(crate) use pathlen::{is_anchor_expired, is_path_len, Limits};

/// A TLS file that could not be used, with the path and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}: {msg}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub msg: String,
}

impl TlsError {
    /// A reload's CRL `new` is older than `old`, the one in force for the
    /// same CA and scope.
    pub fn older_crl(new: &CrlInfo, old: &CrlInfo) -> TlsError {
        let num = |i: &CrlInfo| i.age.1.as_ref().map_or("none".into(), ToString::to_string);
        let at = |i: &CrlInfo| rfc3339(i.age.0.max(0) as u64);
        err(
            &new.path,
            format!(
                "this CRL from ({}) is older than the one in force (thisUpdate {}, CRL number {}, against {} and {} from {}): loading it would let certificates revoked since back in; put the CA's current CRL there (`ipcgate crl --ca-dir ...` re-issues it)",
                new.issuer,
                at(new),
                num(new),
                at(old),
                num(old),
                old.path.display()
            ),
        )
    }
}

fn err(path: &Path, msg: impl Into<String>) -> TlsError {
    TlsError {
        path: path.to_owned(),
        msg: msg.into(),
    }
}

/// The one crypto provider used everywhere (rustls and rcgen share aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Encrypted bytes a connection the relay writes to may hold unsent (see
/// [`limit_send`]). rustls' default, 64 KiB, is less than one full relay
/// write (a server stream's four 16 KiB frames and their heads): each such
/// write went out as a `writev` of four records and then one of a lone
/// 36-byte record, half of all its writes. Beyond one write, the limit is
/// only ever filled while the peer is not reading.
pub const SEND_BUFFER: usize = 128 << 10;

/// Sets [`SEND_BUFFER`] on a connection: every TLS connection the gateway
/// makes or accepts (clients, TLS backends, the client CLI and library).
pub fn limit_send<D>(conn: &mut rustls::ConnectionCommon<D>) {
    conn.set_buffer_limit(Some(SEND_BUFFER));
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// Unreadable file, bad PEM, or no certificate in it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            path,
            "no certificate found (expected PEM blocks starting with -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1 PEM).
///
/// # Errors
/// Unreadable file or no key in it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        err(
            path,
            format!("no usable private key ({e}); expected PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\""),
        )
    })
}

/// A trust bundle as the verifiers take it: the anchors, and each one's own
/// pathLenConstraint, which webpki's anchors do not keep (`pathlen`), so
/// that the gateway and its clients both take a root's limit at its word.
#[derive(Clone, Debug)]
pub struct Roots {
    store: RootCertStore,
    /// Beside `store.roots`, one for one.
    limits: Vec<Option<u32>>,
    /// The subject names as x509-parser gives them (with the DER header,
    /// unlike webpki's anchors), to compare with the chains' issuer names.
    subjects: Vec<Vec<u8>>,
    /// Each anchor's notAfter (seconds since the epoch), which webpki's
    /// anchors do not keep either (`pathlen` holds paths to it).
    not_after: Vec<u64>,
}

impl Roots {
    /// The anchors of CA certificates, each checked as [`load_roots`] does.
    ///
    /// # Errors
    /// A certificate that cannot be a trust anchor, named by its place.
    pub fn from_certs(
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Roots, String> {
        Self::but(certs, &[])
    }

    /// The anchors of `certs` but for the indices in `skip` (which are
    /// checked all the same: they are in the file).
    fn but(
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
        skip: &[usize],
    ) -> Result<Roots, String> {
        let mut roots = Roots {
            store: RootCertStore::empty(),
            limits: Vec::new(),
            subjects: Vec::new(),
            not_after: Vec::new(),
        };
        for (i, cert) in certs.into_iter().enumerate() {
            let (limit, subject, not_after) =
                check_ca(&cert).map_err(|m| format!("certificate #{} {m}", i + 1))?;
            if skip.contains(&i) {
                continue;
            }
            roots
                .store
                .add(cert)
                .map_err(|e| format!("certificate #{} is not a usable CA: {e}", i + 1))?;
            roots.limits.push(limit);
            roots.subjects.push(subject);
            roots.not_after.push(not_after);
        }
        Ok(roots)
    }

    /// The anchors alone, as rustls takes them.
    pub fn store(&self) -> &RootCertStore {
        &self.store
    }

    pub(crate) fn limits(&self) -> &[Option<u32>] {
        &self.limits
    }

    /// Beside [`Roots::limits`]: each anchor's notAfter, in seconds.
    pub(crate) fn not_after(&self) -> &[u64] {
        &self.not_after
    }
}

/// Reads a trust bundle; every certificate in it becomes a trust anchor.
///
/// Each one must be a CA certificate (basicConstraints CA:TRUE, and keyCertSign
/// if it has a key usage). rustls would take any certificate as an anchor, so a
/// leaf pasted into the bundle by mistake (`cat ca.pem alice.pem`) would let
/// alice's key sign certificates for any identity.
///
/// # Errors
/// Unreadable file, no certificate, or a certificate that cannot be an anchor.
pub fn load_roots(path: &Path) -> Result<Roots, TlsError> {
    Roots::from_certs(load_certs(path)?).map_err(|m| err(path, m))
}

/// The gateway's server side: the rustls config, the verifier it uses (kept to
/// re-check live connections after a reload), the gateway's own URI SAN (named
/// `By=` in forwarded XFCC headers) and what the CRLs say about themselves.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub verifier: Arc<dyn ClientCertVerifier>,
    pub by: Option<String>,
    pub crls: Vec<CrlInfo>,
    /// The trust anchors' subject names (DER), where [`chain_not_after`]
    /// stops.
    pub anchors: Vec<Vec<u8>>,
    /// Each trusted CA's notAfter, in seconds since the epoch. Past one (in
    /// whole seconds, as webpki compares), the verifier refuses paths to
    /// that CA, and the next periodic check re-verifies live connections
    /// (`reload::TlsSource::check_crls`).
    pub anchors_expire: Vec<u64>,
}

/// One loaded CRL.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    pub path: PathBuf,
    pub issuer: String,
    pub next_update: Option<SystemTime>,
    pub revoked: usize,
    /// Its issuer's name and issuing distribution point: CRLs of one scope
    /// supersede one another.
    scope: Vec<u8>,
    /// thisUpdate (seconds) and CRL number: which of two is newer.
    age: (i64, Option<x509_parser::num_bigint::BigUint>),
    /// It has an issuing distribution point.
    partition: bool,
}

impl CrlInfo {
    /// Past its next-update: the CA should have published a newer one.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|t| t < now)
    }
}

/// The first of `new` that is older than the CRL of its scope in `old`,
/// with that one: a reload must not bring back a CRL from before a
/// revocation (a restored backup, a stale copy pushed again), which would
/// let the revoked certificates in again.
pub fn older_crl<'a>(old: &'a [CrlInfo], new: &'a [CrlInfo]) -> Option<(&'a CrlInfo, &'a CrlInfo)> {
    new.iter().find_map(|n| {
        old.iter()
            .find(|o| o.scope == n.scope && n.age < o.age)
            .map(|o| (n, o))
    })
}

/// Reads CRLs (PEM `X509 CRL` blocks, or one DER CRL) and checks each is signed
/// by a CA in the trust bundle — a CRL nobody can verify would otherwise be
/// silently useless.
///
/// Of two CRLs from the same CA and of the same scope (issuing distribution
/// point) only the newer is kept (by thisUpdate, then CRL number), with a
/// warning: webpki consults the first CRL that covers a certificate, so an
/// older one listed first (`crl = ["old.crl", "new.crl"]`, or `cat old new`)
/// would hide every revocation the newer adds.
///
/// # Errors
/// Unreadable or unparsable file, a CRL from outside the bundle, CRLs from
/// two CAs of the same name (webpki cannot tell their CRLs apart), or a full
/// CRL beside a partition of the same CA (no order of the two is right for
/// every certificate).
pub fn load_crls(
    paths: &[PathBuf],
    cas: &[CertificateDer<'static>],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Vec<CrlInfo>), TlsError> {
    let mut ders: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    let mut infos: Vec<CrlInfo> = Vec::new();
    // Per kept CRL (beside `infos`): its signer (index in `cas`) and issuer
    // name with its issuing distribution point, to find a second CRL of the
    // same CA and scope.
    let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read CRL: {e}")))?;
        let mut found: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| err(path, format!("bad PEM: {e}")))?;
        if found.is_empty() {
            found.push(CertificateRevocationListDer::from(bytes.clone()));
        }
        for crl in found {
            let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| {
                err(
                    path,
                    format!("not a CRL (expected PEM \"-----BEGIN X509 CRL-----\" or DER): {e}"),
                )
            })?;
            let issuer = crate::identity::rfc4514(parsed.issuer());
            let signer = cas.iter().position(|ca| {
                X509Certificate::from_der(ca.as_ref()).is_ok_and(|(_, c)| {
                    c.subject().as_raw() == parsed.issuer().as_raw()
                        && parsed.verify_signature(c.public_key()).is_ok()
                })
            });
            let Some(signer) = signer else {
                return Err(err(
                    path,
                    format!("CRL issued by ({issuer}) is not signed by any CA in the client_ca bundle (a CRL must come from the CA that issued the client certificates)"),
                ));
            };
            let next_update = parsed.next_update().map(|t| {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
            });
            let mut info = CrlInfo {
                path: path.clone(),
                issuer,
                next_update,
                revoked: parsed.iter_revoked_certificates().count(),
                scope: Vec::new(),
                age: (
                    parsed.last_update().timestamp(),
                    parsed.crl_number().cloned(),
                ),
                partition: false,
            };
            // Two CRLs of one CA but different issuing distribution points
            // are partitions, each authoritative for its own certificates:
            // only same-scope CRLs supersede one another.
            let mut name = parsed.issuer().as_raw().to_vec();
            if let Some(idp) = parsed.extensions().iter().find(|e| {
                e.oid == x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT
            }) {
                name.extend_from_slice(idp.value);
                info.partition = true;
            }
            // By the signer's key too: two CAs of one name (a replacement
            // made beside the old one) are not one CRL's old and new.
            info.scope.clone_from(&name);
            if let Ok((_, c)) = X509Certificate::from_der(cas[signer].as_ref()) {
                info.scope.extend_from_slice(c.public_key().raw);
            }
            let Some(i) = kept.iter().position(|k| k.1 == name) else {
                kept.push((signer, name));
                infos.push(info);
                ders.push(crl);
                continue;
            };
            if kept[i].0 != signer {
                return Err(err(
                    path,
                    format!("two CAs in the client_ca bundle are named ({}) and each has a CRL; webpki finds a CRL by its issuer's name, so one CA's clients would all be refused: give one of them another subject", info.issuer),
                ));
            }
            let newer = info.age > infos[i].age;
            let (old, new) = if newer {
                (&infos[i], &info)
            } else {
                (&info, &infos[i])
            };
            tracing::warn!(
                target: "ipcgate::tls",
                issuer = %info.issuer,
                kept = %new.path.display(),
                superseded = %old.path.display(),
                "two CRLs from the same CA: the newer one is used, the older one ignored (list only the current CRL)"
            );
            if newer {
                infos[i] = info;
                ders[i] = crl;
            }
        }
    }
    // webpki checks a certificate against the first CRL that covers it. A
    // full CRL (no issuing distribution point) covers all its issuer's
    // certificates, and webpki lets a partition cover those that name no
    // distribution point. So of a full CRL and a partition of one CA, the
    // one listed first would hide the other's revocations, whichever is
    // newer: no order is right for every certificate.
    for (i, full) in infos.iter().enumerate() {
        let partition = infos
            .iter()
            .enumerate()
            .find(|&(j, p)| p.partition && !full.partition && kept[j].0 == kept[i].0);
        if let Some((_, p)) = partition {
            return Err(err(
                &p.path,
                format!(
                    "a partition (a CRL with an issuing distribution point) of the CA ({}) that {} holds a full CRL of: webpki consults only the first CRL that covers a certificate, so one would hide the other's revocations; list either the CA's full CRL or its partitions",
                    p.issuer,
                    full.path.display()
                ),
            ));
        }
    }
    Ok((ders, infos))
}

/// Builds the server config from `[tls]`.
///
/// Session resumption is off: a resumed TLS 1.3 session brings the peer's
/// certificate back without re-running verification, which would let a revoked or
/// expired client certificate in again once CRLs are reloaded.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn server(cfg: &config::Tls) -> Result<ServerTls, TlsError> {
    let provider = provider();
    let cas = load_certs(&cfg.client_ca)?;
    let (crl_ders, crls) = load_crls(&cfg.crl, &cas)?;
    let revoked = revoked_cas(&cas, &crl_ders);
    for &i in &revoked {
        tracing::error!(
            target: "ipcgate::tls",
            file = %cfg.client_ca.display(),
            certificate = i + 1,
            "a CA in the client_ca bundle is revoked by its issuer's CRL: it is not trusted, and its clients are refused (remove it from the bundle)"
        );
    }
    // webpki keeps no validity for an anchor, so an expired CA would go on
    // vouching for its clients (OpenSSL and Go refuse them).
    // In whole seconds, as webpki compares.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut expired = Vec::new();
    for (i, ca) in cas.iter().enumerate() {
        if let Some((subject, not_after)) = expiry(ca).filter(|&(_, t)| now > t) {
            tracing::error!(
                target: "ipcgate::tls",
                file = %cfg.client_ca.display(),
                certificate = i + 1,
                ca = %subject,
                not_after = %rfc3339(not_after),
                "a CA in the client_ca bundle has expired: it is not trusted, and its clients are refused (replace it with its renewal)"
            );
            expired.push((i, subject, not_after));
        }
    }
    let skip: Vec<usize> = revoked
        .iter()
        .copied()
        .chain(expired.iter().map(|e| e.0))
        .collect();
    let trusted = Roots::but(cas, &skip).map_err(|m| err(&cfg.client_ca, m))?;
    if trusted.store.is_empty() && !expired.is_empty() {
        let list: Vec<String> = expired
            .iter()
            .map(|(i, subject, t)| {
                format!("certificate #{} ({subject}) expired {}", i + 1, rfc3339(*t))
            })
            .collect();
        return Err(err(
            &cfg.client_ca,
            format!(
                "no CA in the bundle can be trusted: {}; put the CA's renewed certificate in the bundle",
                list.join(", ")
            ),
        ));
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(trusted.store.clone()),
        provider.clone(),
    );
    if !crl_ders.is_empty() {
        // The whole chain: an intermediate CA a client sends is looked up in
        // its issuer's CRL too, so revoking it refuses everything under it.
        builder = builder.with_crls(crl_ders.clone());
        if cfg.crl_expired_deny {
            builder = builder.enforce_revocation_expiration();
        }
        if !cfg.revocation_unknown_deny {
            builder = builder.allow_unknown_revocation_status();
        }
    }
    let unusable = |e: &dyn std::fmt::Display| {
        err(
            &cfg.client_ca,
            format!("cannot verify clients with this bundle: {e}"),
        )
    };
    let verifier = builder.build().map_err(|e| unusable(&e))?;
    let verifier = pathlen::PathLen::wrap(
        verifier,
        &trusted,
        &crl_ders,
        cfg.revocation_unknown_deny,
        cfg.crl_expired_deny,
        provider.signature_verification_algorithms,
    )
    .map_err(|e| unusable(&e))?;
    let chain = load_certs(&cfg.cert)?;
    let by = first_uri_san(&chain[0]);
    let key = load_key(&cfg.key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&cfg.cert, e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|e| {
            err(
                &cfg.key,
                format!(
                    "does not fit the certificate in {}: {e}",
                    cfg.cert.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(ServerTls {
        config: Arc::new(config),
        verifier,
        by,
        crls,
        anchors_expire: trusted.not_after.clone(),
        anchors: trusted.subjects,
    })
}

/// The earliest notAfter of the intermediate CAs a client sent above its
/// leaf, following issuer names up to a trust anchor; `None` if there are
/// none. A connection must not outlive its intermediate any more than its
/// leaf. Which of the sent certificates webpki's path went through is not
/// known here, so every branch of names is followed: each sent certificate
/// valid now that names can reach from the leaf counts, and an extra one (a
/// decoy carrying an intermediate's name) can only shorten the connection.
/// A cross-signed copy of an anchor (as some clients send, sometimes
/// expired) is never reached: the walk stops at an anchor's name.
pub fn chain_not_after(chain: &[CertificateDer<'_>], anchors: &[Vec<u8>]) -> Option<SystemTime> {
    if chain.len() < 2 {
        return None;
    }
    let certs: Vec<X509Certificate<'_>> = chain
        .iter()
        .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, c)| c))
        .collect();
    let mut used = vec![false; certs.len()];
    *used.first_mut()? = true;
    // Issuer names still to follow; each certificate is taken once, so the
    // walk ends.
    let mut names = vec![certs.first()?.issuer().as_raw()];
    let mut earliest: Option<i64> = None;
    while let Some(issuer) = names.pop() {
        if anchors.iter().any(|a| a.as_slice() == issuer) {
            continue;
        }
        for (i, c) in certs.iter().enumerate() {
            // One not valid now cannot be on the path verified (an expired
            // predecessor sent along with its renewal).
            if !used[i] && c.subject().as_raw() == issuer && c.validity().is_valid() {
                used[i] = true;
                let t = c.validity().not_after.timestamp();
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                names.push(c.issuer().as_raw());
            }
        }
    }
    earliest.map(|t| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))
}

/// The bundle CAs (by index) that a CRL from their issuer lists as revoked.
/// webpki stops at a trust anchor and never looks it up in a CRL, so a
/// revoked intermediate CA left in the bundle would go on vouching for its
/// clients.
fn revoked_cas(
    cas: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> Vec<usize> {
    let crls: Vec<_> = crls
        .iter()
        .filter_map(|c| x509_parser::parse_x509_crl(c.as_ref()).ok().map(|(_, c)| c))
        .collect();
    let parsed: Vec<Option<X509Certificate<'_>>> = cas
        .iter()
        .map(|der| X509Certificate::from_der(der.as_ref()).ok().map(|(_, c)| c))
        .collect();
    let mut dropped: Vec<usize> = parsed
        .iter()
        .enumerate()
        .filter(|(_, ca)| {
            ca.as_ref().is_some_and(|ca| {
                ca.subject().as_raw() != ca.issuer().as_raw()
                    && crls.iter().any(|crl| {
                        crl.issuer().as_raw() == ca.issuer().as_raw()
                            && crl
                                .iter_revoked_certificates()
                                .any(|r| r.raw_serial() == ca.raw_serial())
                    })
            })
        })
        .map(|(i, _)| i)
        .collect();
    // And what they issued, down the bundle: a CA whose issuer is in the
    // bundle only as dropped ones goes too (R revokes I1, so I2 under I1
    // must not stay an anchor).
    let named = |j: usize, name: &[u8]| {
        parsed[j]
            .as_ref()
            .is_some_and(|c| c.subject().as_raw() == name)
    };
    loop {
        let orphaned = |i: usize| {
            let Some(ca) = &parsed[i] else { return false };
            let issuer = ca.issuer().as_raw();
            let mut holders = (0..parsed.len()).filter(|&j| named(j, issuer)).peekable();
            // Some CA holds the issuer's name, and every one that does is dropped.
            issuer != ca.subject().as_raw()
                && holders.peek().is_some()
                && holders.all(|j| dropped.contains(&j))
        };
        let more: Vec<usize> = (0..parsed.len())
            .filter(|&i| !dropped.contains(&i) && orphaned(i))
            .collect();
        if more.is_empty() {
            return dropped;
        }
        dropped.extend(more);
    }
}

fn first_uri_san(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

/// A time in seconds since the epoch, as RFC 3339.
pub(crate) fn rfc3339(secs: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// A certificate's subject (RFC 4514) and notAfter (seconds since the
/// epoch).
fn expiry(cert: &CertificateDer<'_>) -> Option<(String, u64)> {
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some((
        crate::identity::rfc4514(c.subject()),
        c.validity().not_after.timestamp().max(0) as u64,
    ))
}

/// Whether `cert` can be a trust anchor; its pathLenConstraint, subject name
/// and notAfter (seconds since the epoch) if so.
fn check_ca(cert: &CertificateDer<'_>) -> Result<(Option<u32>, Vec<u8>, u64), String> {
    let (_, c) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("cannot be parsed: {e}"))?;
    let subject = crate::identity::rfc4514(c.subject());
    let bc = c
        .basic_constraints()
        .map_err(|e| format!("({subject}) has a bad basicConstraints: {e}"))?
        .filter(|bc| bc.value.ca);
    let Some(bc) = bc else {
        return Err(format!(
            "({subject}) is not a CA certificate (no basicConstraints CA:TRUE); a trust bundle holds only CA certificates — remove it, or use the CA that issued it"
        ));
    };
    // One whose key usage cannot be read is refused, not taken as having none.
    match c.key_usage() {
        Err(e) => {
            return Err(format!(
                "({subject}) has a key usage extension that cannot be parsed: {e}"
            ))
        }
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(format!(
                "({subject}) is a CA certificate without the keyCertSign key usage"
            ))
        }
        Ok(_) => {}
    }
    Ok((
        bc.value.path_len_constraint,
        c.subject().as_raw().to_vec(),
        c.validity().not_after.timestamp().max(0) as u64,
    ))
}

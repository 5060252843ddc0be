//! The trust anchors' own path length constraints and validity.
//!
//! webpki keeps of an anchor only its subject, key and name constraints
//! (RFC 5280 leaves anchor processing to the implementation), so a root's
//! `pathlen:0` does not stop a chain through an intermediate CA under it,
//! and an expired root goes on vouching for its clients. OpenSSL and Go's
//! crypto/x509 honour both, and `ipcgate ca init` writes a limit: a root
//! that says "no CAs under me" is taken at its word here too, and one past
//! its notAfter vouches for no one.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::SignatureVerificationAlgorithm;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptions, RevocationOptionsBuilder, UnknownStatusPolicy,
    VerifiedPath,
};

use super::Roots;

/// All the anchors of a bundle with their limits and notAfters, and the
/// search that takes only paths within their anchor's limit and to an anchor
/// valid now. Shared by the gateway's check of its clients and its clients'
/// check of the gateway.
#[derive(Debug)]
pub(crate) struct Limits {
    anchors: Vec<TrustAnchor<'static>>,
    /// The most intermediates allowed under each of `anchors`.
    limits: Vec<Option<usize>>,
    /// Each of `anchors`' notAfter, in seconds since the epoch.
    not_after: Vec<u64>,
    any_limit: bool,
    /// The earliest of `not_after`: until then no anchor has expired.
    earliest: u64,
}

impl Limits {
    /// `None` for a bundle without anchors.
    pub(crate) fn of(roots: &Roots) -> Option<Limits> {
        Some(Limits {
            anchors: roots.store().roots.clone(),
            limits: roots
                .limits()
                .iter()
                .map(|n| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
                .collect(),
            not_after: roots.not_after().to_vec(),
            any_limit: roots.limits().iter().any(Option::is_some),
            earliest: *roots.not_after().iter().min()?,
        })
    }

    /// The index of the anchor `path` ends at. By identity, not by name and
    /// key: the old `pathlen:0` root beside its re-certified copy without a
    /// limit (a migration) are two anchors with two limits, and a renewed
    /// root keeps its name and key but not its predecessor's notAfter.
    fn anchor(&self, path: &VerifiedPath<'_>) -> Option<usize> {
        let a = path.anchor();
        // webpki hands back an item of the slice `verify` gave it.
        let i = self.anchors.iter().position(|b| std::ptr::eq(a, b));
        debug_assert!(i.is_some(), "a path ends at an anchor not ours");
        i
    }

    /// Whether a path the first search found can still be turned down: one
    /// through intermediates when an anchor has a limit, or any path once an
    /// anchor has expired. Otherwise there is nothing to search for.
    pub(crate) fn needed(&self, intermediates: &[CertificateDer<'_>], now: UnixTime) -> bool {
        (self.any_limit && !intermediates.is_empty()) || now.as_secs() > self.earliest
    }

    /// A second path search, after a verifier found one path: this one takes
    /// only paths within their anchor's limit, to an anchor valid now. Both
    /// passing proves one path meets every rule at once (webpki tries the
    /// next path when one is turned down, so a longer path beside a valid
    /// short one, or a path to an expired root beside one to its renewal,
    /// does no harm). Skipped when it cannot turn anything down
    /// ([`Limits::needed`]).
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        revocation: Option<RevocationOptions<'_>>,
        algs: &[&dyn SignatureVerificationAlgorithm],
    ) -> Result<(), rustls::Error> {
        if !self.needed(intermediates, now) {
            return Ok(());
        }
        let cert = EndEntityCert::try_from(end_entity).map_err(refused)?;
        let too_long = std::cell::Cell::new(false);
        let expired = std::cell::Cell::new(None);
        // Every intermediate counts, a self-issued one (a root key's rollover
        // link) too: as in Go's crypto/x509, stricter than RFC 5280 and
        // OpenSSL, which skip those.
        let within = |path: &VerifiedPath<'_>| {
            // Never expected (see `anchor`); if it were, closed, not open.
            let Some(i) = self.anchor(path) else {
                return Err(webpki::Error::UnknownIssuer);
            };
            if now.as_secs() > self.not_after[i] {
                expired.set(Some(self.not_after[i]));
                return Err(webpki::Error::CertExpired {
                    time: now,
                    not_after: UnixTime::since_unix_epoch(Duration::from_secs(self.not_after[i])),
                });
            }
            match self.limits[i] {
                Some(n) if path.intermediate_certificates().count() > n => {
                    too_long.set(true);
                    Err(webpki::Error::PathLenConstraintViolated)
                }
                _ => Ok(()),
            }
        };
        match cert.verify_for_usage(
            algs,
            &self.anchors,
            intermediates,
            now,
            usage,
            revocation,
            Some(&within),
        ) {
            Ok(_) => Ok(()),
            // The first pass found a valid path, so a path turned down for its
            // length is why, whatever error webpki ranks higher (an expired
            // cross-signed copy sent along, say).
            Err(_) if too_long.get() => Err(refused(webpki::Error::PathLenConstraintViolated)),
            Err(_) if expired.get().is_some() => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(OtherError(Arc::new(AnchorExpired {
                    not_after: expired.get().unwrap_or_default(),
                }))),
            )),
            Err(e) => Err(refused(e)),
        }
    }
}

/// A path to an anchor past its notAfter, and no other path.
#[derive(Debug)]
pub(crate) struct AnchorExpired {
    not_after: u64,
}

impl std::fmt::Display for AnchorExpired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the CA certificate the chain leads to expired {}: it vouches for no one (trust its renewal instead)",
            super::rfc3339(self.not_after)
        )
    }
}

impl std::error::Error for AnchorExpired {}

/// The error a path to an expired anchor is refused with; `server` names it
/// in the handshake metric.
pub(crate) fn is_anchor_expired(e: &CertificateError) -> bool {
    match e {
        CertificateError::Other(OtherError(o)) => o.downcast_ref::<AnchorExpired>().is_some(),
        _ => false,
    }
}

fn refused(e: webpki::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// rustls's verifier, then, when it can turn down the path found
/// ([`Limits::needed`]), a second path search ([`Limits::verify`]) with the
/// same anchors, CRLs and policies.
#[derive(Debug)]
pub(crate) struct PathLen {
    inner: Arc<dyn ClientCertVerifier>,
    limits: Limits,
    crls: Vec<CertRevocationList<'static>>,
    unknown: UnknownStatusPolicy,
    expired: ExpirationPolicy,
    algs: WebPkiSupportedAlgorithms,
}

/// The error a path too long for its anchor is refused with; `server` names
/// it in the handshake metric.
pub(crate) fn is_path_len(e: &CertificateError) -> bool {
    match e {
        CertificateError::Other(OtherError(o)) => matches!(
            o.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::PathLenConstraintViolated)
        ),
        _ => false,
    }
}

impl PathLen {
    /// `inner` unchanged for a bundle without anchors. `crls` are the ones
    /// `inner` checks, with the same policies.
    pub(crate) fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        roots: &Roots,
        crls: &[CertificateRevocationListDer<'static>],
        unknown_deny: bool,
        expired_deny: bool,
        algs: WebPkiSupportedAlgorithms,
    ) -> Result<Arc<dyn ClientCertVerifier>, webpki::Error> {
        let Some(limits) = Limits::of(roots) else {
            return Ok(inner);
        };
        let crls = crls
            .iter()
            .map(|c| OwnedCertRevocationList::from_der(c.as_ref()).map(CertRevocationList::from))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(PathLen {
            inner,
            limits,
            crls,
            unknown: if unknown_deny {
                UnknownStatusPolicy::Deny
            } else {
                UnknownStatusPolicy::Allow
            },
            expired: if expired_deny {
                ExpirationPolicy::Enforce
            } else {
                ExpirationPolicy::Ignore
            },
            algs,
        }))
    }
}

impl ClientCertVerifier for PathLen {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.limits.needed(intermediates, now) {
            return Ok(verified);
        }
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(self.unknown)
                .with_expiration_policy(self.expired)
                .build()
        });
        self.limits.verify(
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
            revocation,
            self.algs.all,
        )?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

//! The trust anchors' own path length constraints.
//!
//! webpki keeps of an anchor only its subject, key and name constraints
//! (RFC 5280 leaves anchor processing to the implementation), so a root's
//! `pathlen:0` does not stop a chain through an intermediate CA under it.
//! OpenSSL and Go's crypto/x509 honour it, and `ipcgate ca init` writes it:
//! a root that says "no CAs under me" is taken at its word here too.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy, VerifiedPath,
};

/// rustls's verifier, then, for a client that sent intermediates, a second
/// path search with the same anchors and CRLs that takes only paths within
/// their anchor's limit. Both must pass, and the second alone proves one
/// path meets every rule at once (webpki tries the next path when one is
/// turned down, so a longer path beside a valid short one does no harm).
#[derive(Debug)]
pub(crate) struct PathLen {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Vec<TrustAnchor<'static>>,
    /// The most intermediates allowed under each of `anchors`.
    limits: Vec<Option<usize>>,
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
    /// `inner` unchanged when no anchor carries a limit.
    ///
    /// `anchors` pairs each trust anchor with its certificate's
    /// pathLenConstraint; `crls` are the ones `inner` checks, with the same
    /// policies.
    pub(crate) fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        anchors: Vec<(TrustAnchor<'static>, Option<u32>)>,
        crls: &[CertificateRevocationListDer<'static>],
        unknown_deny: bool,
        expired_deny: bool,
        algs: WebPkiSupportedAlgorithms,
    ) -> Result<Arc<dyn ClientCertVerifier>, webpki::Error> {
        let limits: Vec<Option<usize>> = anchors
            .iter()
            .map(|(_, n)| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .collect();
        if limits.iter().all(Option::is_none) {
            return Ok(inner);
        }
        let crls = crls
            .iter()
            .map(|c| OwnedCertRevocationList::from_der(c.as_ref()).map(CertRevocationList::from))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(PathLen {
            inner,
            anchors: anchors.into_iter().map(|(a, _)| a).collect(),
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

    /// The limit of the anchor `path` ends at, if it has one. By identity,
    /// not by name and key: the old `pathlen:0` root beside its re-certified
    /// copy without a limit (a migration) are two anchors with two limits.
    fn limit(&self, path: &VerifiedPath<'_>) -> Option<usize> {
        let a = path.anchor();
        let i = self.anchors.iter().position(|b| std::ptr::eq(a, b))?;
        self.limits[i]
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
        // With nothing sent above the leaf no path has an intermediate.
        if intermediates.is_empty() {
            return Ok(verified);
        }
        let refused = |e: webpki::Error| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        };
        let cert = EndEntityCert::try_from(end_entity).map_err(refused)?;
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(self.unknown)
                .with_expiration_policy(self.expired)
                .build()
        });
        let too_long = std::cell::Cell::new(false);
        let within = |path: &VerifiedPath<'_>| match self.limit(path) {
            Some(n) if path.intermediate_certificates().count() > n => {
                too_long.set(true);
                Err(webpki::Error::PathLenConstraintViolated)
            }
            _ => Ok(()),
        };
        match cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            KeyUsage::client_auth(),
            revocation,
            Some(&within),
        ) {
            Ok(_) => Ok(verified),
            // The first pass found a valid path, so a path turned down for its
            // length is why, whatever error webpki ranks higher (an expired
            // cross-signed copy sent along, say).
            Err(_) if too_long.get() => Err(refused(webpki::Error::PathLenConstraintViolated)),
            Err(e) => Err(refused(e)),
        }
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

//! rustls configuration from PEM files: TLS 1.3 only, ALPN `h2` only, client
//! certificates required and verified against the configured CA bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config;

/// A TLS file that could not be used, with the path and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}: {msg}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub msg: String,
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

/// Reads a trust bundle; every certificate in it becomes a trust anchor.
///
/// Each one must be a CA certificate (basicConstraints CA:TRUE, and keyCertSign
/// if it has a key usage). rustls would take any certificate as an anchor, so a
/// leaf pasted into the bundle by mistake (`cat ca.pem alice.pem`) would let
/// alice's key sign certificates for any identity.
///
/// # Errors
/// Unreadable file, no certificate, or a certificate that cannot be an anchor.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        check_ca(&cert).map_err(|m| err(path, format!("certificate #{} {m}", i + 1)))?;
        roots.add(cert).map_err(|e| {
            err(
                path,
                format!("certificate #{} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// The gateway's server side: the rustls config plus the gateway's own URI SAN
/// (named `By=` in forwarded XFCC headers).
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub by: Option<String>,
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
    let roots = Arc::new(load_roots(&cfg.client_ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| {
            err(
                &cfg.client_ca,
                format!("cannot verify clients with this bundle: {e}"),
            )
        })?;
    let chain = load_certs(&cfg.cert)?;
    let by = first_uri_san(&chain[0]);
    let key = load_key(&cfg.key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&cfg.cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
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
        by,
    })
}

fn first_uri_san(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

fn check_ca(cert: &CertificateDer<'_>) -> Result<(), String> {
    let (_, c) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("cannot be parsed: {e}"))?;
    let subject = crate::identity::rfc4514(c.subject());
    let is_ca = c
        .basic_constraints()
        .map_err(|e| format!("({subject}) has a bad basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(format!(
            "({subject}) is not a CA certificate (no basicConstraints CA:TRUE); a trust bundle holds only CA certificates — remove it, or use the CA that issued it"
        ));
    }
    if let Ok(Some(ku)) = c.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(format!(
                "({subject}) is a CA certificate without the keyCertSign key usage"
            ));
        }
    }
    Ok(())
}

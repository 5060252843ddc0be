//! Dialing the gateway from Rust: a Unix socket, mutual TLS with ALPN h2, and a
//! tonic [`Channel`] on top — verifying that the other end is the real gateway
//! (CA and name or SPIFFE ID, and/or a pinned certificate fingerprint, and/or
//! the socket owner's uid, checked before a single byte is sent).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::identity::hex;
use crate::tls::{self, TlsError};

/// How a client decides it reached the real gateway. At least one of `ca` and
/// `sha256` must be set; a CA alone is not enough without a name to check.
#[derive(Clone, Default)]
pub struct ServerTrust {
    /// Verify the gateway's chain against these CAs (within each one's own
    /// path length limit). [`tls::Roots`] takes only CA certificates, as the
    /// gateway's own `client_ca` does.
    pub ca: Option<tls::Roots>,
    /// With `ca`: the gateway's certificate must carry this URI SAN (instead
    /// of the DNS name given to [`connect`]).
    pub spiffe_id: Option<String>,
    /// The gateway's certificate must have this SHA-256 fingerprint.
    pub sha256: Option<[u8; 32]>,
}

/// Parses a SHA-256 fingerprint: 64 hex digits, either case, colons optional.
///
/// # Errors
/// Anything else.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.is_ascii() {
        return Err(format!(
            "{s:?} is not a SHA-256 fingerprint (64 hex digits, colons optional)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{s:?} is not a SHA-256 fingerprint (not hex)"))?;
    }
    Ok(out)
}

/// A TLS 1.3 client config presenting `chain`/`key` and trusting `roots`
/// (the gateway's name is checked against the one given to [`connect`]).
///
/// # Errors
/// The key does not fit the certificate.
pub fn config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: tls::Roots,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    config_with(
        chain,
        key,
        ServerTrust {
            ca: Some(roots),
            ..Default::default()
        },
    )
}

/// A client config with any [`ServerTrust`].
///
/// # Errors
/// Nothing to trust, or the key does not fit the certificate.
pub fn config_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust: ServerTrust,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    if trust.ca.is_none() && trust.sha256.is_none() {
        return Err(rustls::Error::General(
            "nothing to trust the gateway by: give a CA bundle or a SHA-256 fingerprint".into(),
        ));
    }
    if trust.ca.is_none() && trust.spiffe_id.is_some() {
        return Err(rustls::Error::General(
            "a server SPIFFE ID is checked against a CA bundle: give one".into(),
        ));
    }
    let provider = tls::provider();
    let verifier = Arc::new(GatewayVerifier {
        path_len: trust.ca.as_ref().and_then(tls::Limits::of),
        roots: trust.ca.map(|r| Arc::new(r.store().clone())),
        spiffe_id: trust.spiffe_id,
        sha256: trust.sha256,
        provider: provider.clone(),
    });
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// [`config`] from PEM files.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn config_from_files(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = tls::load_roots(ca)?;
    config(tls::load_certs(cert)?, tls::load_key(key)?, roots).map_err(|e| TlsError {
        path: key.to_owned(),
        msg: format!("does not fit {}: {e}", cert.display()),
    })
}

/// Checks the gateway's certificate: chain to the CA with the DNS name or the
/// SPIFFE ID, and/or the pinned fingerprint — every check given must pass.
struct GatewayVerifier {
    roots: Option<Arc<RootCertStore>>,
    /// What webpki does not keep of `roots`' anchors: path length limits
    /// and validity.
    path_len: Option<tls::Limits>,
    spiffe_id: Option<String>,
    sha256: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for GatewayVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayVerifier")
            .field("ca", &self.roots.is_some())
            .field("spiffe_id", &self.spiffe_id)
            .field("sha256", &self.sha256.map(|h| hex(&h)))
            .finish()
    }
}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(io::Error::new(io::ErrorKind::PermissionDenied, why)),
    )))
}

impl ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.sha256 {
            let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
            if got.as_ref() != pin {
                return Err(refused(format!(
                    "the gateway's certificate has SHA-256 {}, not the pinned {}",
                    hex(got.as_ref()),
                    hex(pin)
                )));
            }
        }
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if let Some(limits) = &self.path_len {
                limits
                    .verify(
                        end_entity,
                        intermediates,
                        now,
                        webpki::KeyUsage::server_auth(),
                        None,
                        self.provider.signature_verification_algorithms.all,
                    )
                    .map_err(|e| match &e {
                        rustls::Error::InvalidCertificate(c) if tls::is_path_len(c) => refused(
                            "the gateway's chain goes through more intermediate CAs than its root's pathLenConstraint allows (PathLenConstraintViolated): the root must allow them, or the gateway's certificate must come from the root itself".into(),
                        ),
                        // Its own words, not the Debug form rustls prints.
                        rustls::Error::InvalidCertificate(
                            c @ rustls::CertificateError::Other(o),
                        ) if tls::is_anchor_expired(c) => refused(o.0.to_string()),
                        _ => e,
                    })?;
            }
            match &self.spiffe_id {
                None => rustls::client::verify_server_name(&cert, server_name)?,
                Some(want) => {
                    let peer = crate::identity::Peer::new(
                        std::slice::from_ref(&end_entity.clone().into_owned()),
                        None,
                        None,
                    )
                    .map_err(|e| refused(e.to_string()))?;
                    if !peer.uris.iter().any(|u| u == want) {
                        return Err(refused(format!(
                            "the gateway's certificate is for {:?}, not {want:?}",
                            peer.uris
                        )));
                    }
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The local transport to the gateway: a Unix socket, or on Windows a named pipe.
#[cfg(unix)]
pub type ClientIo = tokio::net::UnixStream;
/// The local transport to the gateway: a Unix socket, or on Windows a named pipe.
#[cfg(windows)]
pub type ClientIo = tokio::net::windows::named_pipe::NamedPipeClient;

/// Where and how to reach the gateway.
#[derive(Clone)]
pub struct Target {
    /// The gateway's socket path (on Windows, its pipe name `\\.\pipe\...`).
    pub socket: PathBuf,
    /// Sent as SNI and checked against the certificate unless a SPIFFE ID or a
    /// pin is what identifies the gateway.
    pub server_name: String,
    pub config: Arc<ClientConfig>,
    /// The account that must own the listening socket (SO_PEERCRED), checked
    /// before anything is sent: a socket squatted by another account is refused.
    /// Unix only (on Windows the pipe's first-instance rule and DACL do this job).
    pub server_uid: Option<u32>,
}

/// Opens one mutual-TLS connection to the gateway's socket, verifying the
/// gateway's certificate for `server_name`.
///
/// # Errors
/// Connect or handshake failure.
pub async fn connect(
    socket: &Path,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<ClientIo>> {
    connect_to(&Target {
        socket: socket.to_owned(),
        server_name: server_name.to_owned(),
        config,
        server_uid: None,
    })
    .await
}

/// [`connect`] with every check of a [`Target`].
///
/// # Errors
/// Connect failure, a socket owned by the wrong account, or a failed handshake.
pub async fn connect_to(t: &Target) -> io::Result<TlsStream<ClientIo>> {
    let name = ServerName::try_from(t.server_name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = open(t).await?;
    let mut tls = TlsConnector::from(t.config.clone())
        .connect(name, stream)
        .await?;
    crate::tls::limit_send(tls.get_mut().1);
    Ok(tls)
}

#[cfg(windows)]
async fn open(t: &Target) -> io::Result<ClientIo> {
    if t.server_uid.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "server_uid is a Unix socket check; a named pipe has no owner uid",
        ));
    }
    crate::listen::connect_pipe(&t.socket.to_string_lossy()).await
}

#[cfg(unix)]
async fn open(t: &Target) -> io::Result<ClientIo> {
    let stream = ClientIo::connect(&t.socket).await?;
    if let Some(want) = t.server_uid {
        let got = stream.peer_cred()?.uid();
        if got != want {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is served by uid {got}, not the expected uid {want}: refusing to talk to it", t.socket.display()),
            ));
        }
    }
    Ok(stream)
}

/// A tonic channel that dials the gateway's socket with mutual TLS. Connection
/// is lazy: errors surface on the first call.
pub fn channel(socket: PathBuf, server_name: String, config: Arc<ClientConfig>) -> Channel {
    channel_to(Target {
        socket,
        server_name,
        config,
        server_uid: None,
    })
}

/// [`channel`] with every check of a [`Target`].
pub fn channel_to(target: Target) -> Channel {
    let connector = tower::service_fn(move |_: http::Uri| {
        let t = target.clone();
        async move { connect_to(&t).await.map(TokioIo::new) }
    });
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(connector)
}

/// Connects, completes the TLS handshake and waits for the gateway's first HTTP/2
/// frame. In TLS 1.3 the server judges the client certificate after the client
/// considers the handshake done, so a refusal shows up as an alert on the first
/// read; this surfaces it as an error (e.g. "received fatal alert: UnknownCA").
///
/// # Errors
/// The connect, handshake or alert error; `UnexpectedEof` if the gateway closed
/// without a word.
pub async fn probe(socket: &Path, server_name: &str, config: Arc<ClientConfig>) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect(socket, server_name, config).await?;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    s.flush().await?;
    let mut b = [0u8; 9];
    s.read_exact(&mut b).await?;
    Ok(())
}

//! Dialing the gateway from Rust: a Unix socket, mutual TLS with ALPN h2, and a
//! tonic [`Channel`] on top. Used by the demo and the tests, and the seed of the
//! client-side verification work (server pinning, peer uid checks).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::UnixStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{self, TlsError};

/// A TLS 1.3 client config presenting `chain`/`key` and trusting `roots`.
///
/// # Errors
/// The key does not fit the certificate.
pub fn config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut c = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
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

/// Opens one mutual-TLS connection to the gateway's socket, verifying the
/// gateway's certificate for `server_name`.
///
/// # Errors
/// Connect or handshake failure.
pub async fn connect(
    socket: &Path,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<UnixStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = UnixStream::connect(socket).await?;
    TlsConnector::from(config).connect(name, stream).await
}

/// A tonic channel that dials the gateway's socket with mutual TLS. Connection
/// is lazy: errors surface on the first call.
pub fn channel(socket: PathBuf, server_name: String, config: Arc<ClientConfig>) -> Channel {
    let connector = tower::service_fn(move |_: http::Uri| {
        let (socket, name, config) = (socket.clone(), server_name.clone(), config.clone());
        async move { connect(&socket, &name, config).await.map(TokioIo::new) }
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

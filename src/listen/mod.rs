//! Where connections come from: Unix sockets (created so that no other account
//! can race them), TCP for other hosts, and Windows named pipes. Every kind
//! hands the rest of the gateway the same thing: a byte stream and what the
//! operating system says about the peer.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::info;

use crate::identity::PeerCred;

#[cfg(windows)]
mod pipe;
#[cfg(unix)]
mod uds;

#[cfg(windows)]
pub use pipe::{connect_pipe, Pipe};
#[cfg(unix)]
pub use uds::Uds;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{}: exists and is not a socket; refusing to replace it (remove it yourself or choose another listen.uds)", .0.display())]
    NotSocket(PathBuf),
    #[error("{}: another process is listening on this socket (stop it, or choose another listen.uds)", .0.display())]
    InUse(PathBuf),
    #[error("{}: the directory does not exist (create it, owned by the gateway's account, mode 0750 or stricter)", .0.display())]
    NoDir(PathBuf),
    #[error("{}: {why}; another account could replace the socket (use a directory only the gateway's account can write, e.g. systemd RuntimeDirectory=)", .dir.display())]
    UnsafeDir { dir: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ListenError + '_ {
    move |source| ListenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A TCP listener for clients on other hosts. Nagle is off on every accepted
/// connection: gRPC writes whole frames and waits for answers.
pub struct Tcp {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Tcp {
    /// Binds `addr` (port 0 picks a free port; [`Tcp::local_addr`] tells which).
    ///
    /// # Errors
    /// The address is in use or not local.
    pub fn bind(addr: SocketAddr) -> Result<Tcp, ListenError> {
        let path = PathBuf::from(format!("tcp:{addr}"));
        let std = std::net::TcpListener::bind(addr).map_err(io_err(&path))?;
        std.set_nonblocking(true).map_err(io_err(&path))?;
        let addr = std.local_addr().map_err(io_err(&path))?;
        let listener = tokio::net::TcpListener::from_std(std).map_err(io_err(&path))?;
        info!(%addr, "listening on TCP");
        Ok(Tcp { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One listener of any kind.
pub enum Listener {
    #[cfg(unix)]
    Uds(Uds),
    Tcp(Tcp),
    #[cfg(windows)]
    Pipe(Pipe),
}

/// An accepted connection and what the OS says about who is on the other end.
pub struct Accepted {
    pub conn: Conn,
    /// uid/gid/pid of a local peer (Unix socket, named pipe).
    pub cred: Option<PeerCred>,
    /// Address of a TCP peer.
    pub remote: Option<SocketAddr>,
}

impl Listener {
    /// Accepts one connection.
    ///
    /// # Errors
    /// The accept error (e.g. out of file descriptors); the caller backs off.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        match self {
            #[cfg(unix)]
            Listener::Uds(u) => {
                let (s, cred) = u.accept().await?;
                Ok(Accepted {
                    conn: Conn::Unix(s),
                    cred,
                    remote: None,
                })
            }
            Listener::Tcp(t) => {
                let (s, addr) = t.listener.accept().await?;
                // A peer that already reset is this connection's problem, not
                // the listener's: no accept backoff for it.
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(%addr, error = %e, "TCP_NODELAY not set");
                }
                Ok(Accepted {
                    conn: Conn::Tcp(s),
                    cred: None,
                    remote: Some(addr),
                })
            }
            #[cfg(windows)]
            Listener::Pipe(p) => {
                let (s, cred) = p.accept().await?;
                Ok(Accepted {
                    conn: Conn::Pipe(s),
                    cred,
                    remote: None,
                })
            }
        }
    }

    /// What this listener listens on, for messages and tests.
    pub fn local(&self) -> crate::config::ListenAt {
        use crate::config::ListenAt;
        match self {
            #[cfg(unix)]
            Listener::Uds(u) => ListenAt::Uds(u.path().to_owned()),
            Listener::Tcp(t) => ListenAt::Tcp(t.addr),
            #[cfg(windows)]
            Listener::Pipe(p) => ListenAt::Pipe(p.name().to_owned()),
        }
    }
}

/// A connection from any listener. An enum rather than a boxed trait object:
/// one predictable branch per read or write, and vectored writes kept.
pub enum Conn {
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    Tcp(TcpStream),
    #[cfg(windows)]
    Pipe(tokio::net::windows::named_pipe::NamedPipeServer),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            #[cfg(unix)]
            Conn::Unix($s) => $e,
            Conn::Tcp($s) => $e,
            #[cfg(windows)]
            Conn::Pipe($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            #[cfg(unix)]
            Conn::Unix(s) => s.is_write_vectored(),
            Conn::Tcp(s) => s.is_write_vectored(),
            #[cfg(windows)]
            Conn::Pipe(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

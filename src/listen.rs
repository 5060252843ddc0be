//! The Unix socket the gateway listens on, created so that no other account can
//! race it: bound in a private directory, given its mode and group there, then
//! linked into place (link(2) never replaces an existing path).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::identity::PeerCred;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{}: exists and is not a socket; refusing to replace it (remove it yourself or choose another listen.uds)", .0.display())]
    NotSocket(PathBuf),
    #[error("{}: another process is listening on this socket (stop it, or choose another listen.uds)", .0.display())]
    InUse(PathBuf),
    #[error("{}: the directory does not exist (create it, owned by the gateway's account, mode 0750 or stricter)", .0.display())]
    NoDir(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ListenError + '_ {
    move |source| ListenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A bound Unix socket that removes its file on drop if the file is still the one
/// it created.
pub struct Uds {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

impl Uds {
    /// Binds `path` with permission bits `mode` and optional owning group.
    ///
    /// A socket file left by a dead process is replaced; a live one, or anything
    /// that is not a socket, is refused and left alone.
    ///
    /// # Errors
    /// [`ListenError`] naming the path and the fix.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<Uds, ListenError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let dmeta = std::fs::metadata(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ListenError::NoDir(dir.clone()),
            _ => ListenError::Io {
                path: dir.clone(),
                source: e,
            },
        })?;
        // Anyone who can write the directory can swap the socket for their own.
        if dmeta.mode() & 0o002 != 0 && dmeta.mode() & 0o1000 == 0 {
            warn!(dir = %dir.display(), "socket directory is world-writable without the sticky bit; another account could replace the socket");
        }
        remove_stale(path)?;

        let private = tempfile::Builder::new()
            .prefix(".ipcgate-")
            .tempdir_in(&dir)
            .map_err(io_err(&dir))?;
        let tmp = private.path().join("s");
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(io_err(&tmp))?;
        }
        std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ListenError::InUse(path.to_owned()),
            _ => ListenError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        drop(private);
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        std_listener.set_nonblocking(true).map_err(io_err(path))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err(path))?;
        info!(path = %path.display(), mode = format!("{mode:04o}"), "listening");
        Ok(Uds {
            listener,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection with the peer's credentials.
    ///
    /// # Errors
    /// The accept error (e.g. out of file descriptors); the caller backs off.
    pub async fn accept(&self) -> io::Result<(UnixStream, Option<PeerCred>)> {
        let (stream, _) = self.listener.accept().await?;
        let cred = stream.peer_cred().ok().map(|c| PeerCred {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        });
        Ok((stream, cred))
    }
}

impl Drop for Uds {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Removes `path` only if it is a socket nobody listens on.
fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ListenError::Io {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotSocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(io_err(path))
        }
        Err(e) => Err(ListenError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

//! The Unix socket the gateway listens on, created so that no other account can
//! race it: bound in a private directory, given its mode and group there, then
//! linked into place (link(2) never replaces an existing path).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tracing::info;

use super::{io_err, ListenError};
use crate::identity::PeerCred;

/// A bound Unix socket that removes its file on drop if the file is still the one
/// it created.
pub struct Uds {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
    /// `<socket>.lock`, locked for the gateway's lifetime so two gateways
    /// starting at once cannot both take the path (or remove each other's
    /// socket as stale). `None` for a socket systemd owns.
    _lock: Option<std::fs::File>,
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
        let private = tempfile::Builder::new()
            .prefix(".ipcgate-")
            .tempdir_in(&dir)
            .map_err(io_err(&dir))?;
        // Whoever can write the directory can swap the socket for their own. The
        // sticky bit (as on /tmp) stops that for files others do not own.
        let me = std::fs::metadata(private.path())
            .map_err(io_err(private.path()))?
            .uid();
        if dmeta.mode() & 0o022 != 0 && dmeta.mode() & 0o1000 == 0 {
            return Err(ListenError::UnsafeDir {
                dir,
                why: format!(
                    "mode {:04o} is writable by group or others without the sticky bit",
                    dmeta.mode() & 0o7777
                ),
            });
        }
        if dmeta.uid() != me && dmeta.uid() != 0 {
            return Err(ListenError::UnsafeDir {
                dir,
                why: format!(
                    "owned by uid {}, not by the gateway's uid {me} or root",
                    dmeta.uid()
                ),
            });
        }
        let lock_path = lock_path(path);
        // Never through a symlink, and only a file of our own: in a shared
        // sticky directory (/tmp) another account could have planted either,
        // to make the gateway create a file where it points, or hold the lock.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            // A FIFO planted there would block the open for ever.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&lock_path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => ListenError::UnsafeDir {
                    dir: dir.clone(),
                    why: format!("{} is a symbolic link", lock_path.display()),
                },
                _ => io_err(&lock_path)(e),
            })?;
        let lmeta = lock.metadata().map_err(io_err(&lock_path))?;
        if !lmeta.file_type().is_file() || lmeta.uid() != me {
            return Err(ListenError::UnsafeDir {
                dir,
                why: format!(
                    "{} is not a file of the gateway's uid {me} (uid {})",
                    lock_path.display(),
                    lmeta.uid()
                ),
            });
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ListenError::InUse(path.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(ListenError::Io {
                    path: lock_path,
                    source: e,
                })
            }
        }
        remove_stale(path)?;

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
            _lock: Some(lock),
        })
    }

    /// Wraps a listening socket systemd passed in. The file is systemd's: it
    /// is neither locked nor removed by the gateway.
    ///
    /// # Errors
    /// The descriptor is not a listening Unix socket.
    pub fn from_systemd(
        name: &str,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<Uds, ListenError> {
        let bad = |e: io::Error| ListenError::Io {
            path: PathBuf::from(format!("systemd socket {name:?}")),
            source: e,
        };
        let addr = listener.local_addr().map_err(bad)?;
        let path = addr.as_pathname().map(Path::to_owned).unwrap_or_default();
        listener.set_nonblocking(true).map_err(bad)?;
        let listener = UnixListener::from_std(listener).map_err(bad)?;
        info!(path = %path.display(), fd_name = name, "listening on a socket from systemd");
        Ok(Uds {
            listener,
            path,
            id: (u64::MAX, u64::MAX),
            _lock: None,
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
            uid: Some(c.uid()),
            gid: Some(c.gid()),
            pid: c.pid(),
            groups: peer_groups(&stream),
        });
        Ok((stream, cred))
    }
}

/// The peer's supplementary groups as they were at `connect(2)`
/// (`SO_PEERGROUPS`, Linux 4.13); `None` if the kernel cannot say.
#[cfg(target_os = "linux")]
pub fn peer_groups(stream: &impl std::os::fd::AsRawFd) -> Option<Vec<u32>> {
    #[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
    const SO_PEERGROUPS: libc::c_int = 61;
    #[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
    const SO_PEERGROUPS: libc::c_int = 59;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len =
            libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>()).ok()?;
        // SAFETY: the descriptor is open for the duration (borrowed from
        // `stream`), and the kernel writes at most `len` bytes to the buffer,
        // which is `len` bytes of initialised `gid_t`s; it sets `len` to the
        // bytes written, or to the bytes needed when it fails with ERANGE.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = usize::try_from(len).ok()? / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            // Exactly as many as there are: each connection keeps them.
            return Some(groups[..n.min(groups.len())].to_vec());
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len()
        {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

#[cfg(not(target_os = "linux"))]
pub fn peer_groups(_: &impl std::os::fd::AsRawFd) -> Option<Vec<u32>> {
    None
}

impl Drop for Uds {
    fn drop(&mut self) {
        if self._lock.is_none() {
            return; // systemd's socket
        }
        // Unlinked while still locked, so no other gateway can hold it now.
        let _ = std::fs::remove_file(lock_path(&self.path));
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
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

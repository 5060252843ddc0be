//! systemd integration: readiness notifications (`sd_notify`) and socket
//! activation (`LISTEN_FDS`). Both are no-ops outside systemd.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use tracing::{debug, warn};

/// A listening socket systemd passed in.
pub type Inherited = UnixListener;

/// Sends a state line (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`) to
/// the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &path),
        }
    });
    match sent {
        Ok(_) => debug!(state, "notified systemd"),
        Err(e) => warn!(error = %e, state, "cannot notify systemd"),
    }
}

/// The listening sockets systemd passed to this process, with their names
/// (`FileDescriptorName=`), taken once: the environment is cleared so children
/// do not see them.
pub fn take_listeners() -> Vec<(String, UnixListener)> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // SAFETY (env): called once from main before the runtime (or any other
    // thread) exists, so nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let fd = 3 + i;
            // SAFETY: systemd's socket-activation protocol hands this process
            // (LISTEN_PID matched) the open descriptors 3..3+LISTEN_FDS. Nothing
            // else in the process knows them, and the variables are cleared
            // above, so each is wrapped exactly once and owned from here on.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("fd{fd}"));
            (name, UnixListener::from(owned))
        })
        .collect()
}

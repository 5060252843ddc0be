//! Windows named pipes, the Unix socket's twin: the first instance is ours or
//! binding fails (no squatting on a name another process created), remote
//! clients are rejected, an explicit DACL decides who may connect (default:
//! this account and SYSTEM), one instance is always waiting, and the client's
//! process id goes into the identity. The gateway never impersonates a client.

use std::ffi::c_void;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::path::PathBuf;
use std::ptr;

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tracing::info;
use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY, HANDLE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::SECURITY_IDENTIFICATION;
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::ListenError;
use crate::identity::PeerCred;

/// A security descriptor made from SDDL, freed with `LocalFree`.
struct Descriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is heap memory this struct alone owns; it is only read
// (by CreateNamedPipeW) after construction, so sharing it between threads is safe.
unsafe impl Send for Descriptor {}
// SAFETY: as above, never written after construction.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    fn from_sddl(sddl: &str) -> io::Result<Descriptor> {
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated and outlives the call; `sd` is a valid
        // out-pointer; the size out-parameter may be null per the API contract.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW,
        // which documents LocalFree as its release; freed exactly once.
        unsafe {
            LocalFree(self.0 as _);
        }
    }
}

/// The SID of the account the gateway runs as, e.g. `S-1-5-21-...`.
fn current_user_sid() -> io::Result<String> {
    struct Token(HANDLE);
    impl Drop for Token {
        fn drop(&mut self) {
            // SAFETY: a handle OpenProcessToken returned, closed exactly once.
            unsafe {
                CloseHandle(self.0);
            }
        }
    }
    let mut handle: HANDLE = ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing;
    // `handle` is a valid out-pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut handle) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = Token(handle);
    let mut len = 0u32;
    // SAFETY: a size query: null buffer with zero length is the documented way
    // to learn the needed size (the call fails with the size in `len`).
    unsafe { GetTokenInformation(token.0, TokenUser, ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 elements give the buffer the alignment TOKEN_USER needs.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` holds at least `len` bytes, suitably aligned, and outlives the call.
    if unsafe { GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), len, &mut len) }
        == 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: GetTokenInformation(TokenUser) filled `buf` with a TOKEN_USER whose
    // SID points into `buf`, which is still alive.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is valid (see above); `text` is a valid out-pointer.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ConvertSidToStringSidW returned a NUL-terminated wide string,
    // read up to its NUL and then released with LocalFree as documented.
    let s = unsafe {
        let mut n = 0;
        while *text.add(n) != 0 {
            n += 1;
        }
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
        LocalFree(text as _);
        s
    };
    Ok(s)
}

/// A listening named pipe.
pub struct Pipe {
    name: String,
    descriptor: Descriptor,
    /// The instance waiting for the next client.
    next: NamedPipeServer,
}

impl Pipe {
    /// Creates the first instance of `name` with the DACL in `sddl` (default:
    /// full access for this account and SYSTEM, nobody else, protected from
    /// inheritance).
    ///
    /// # Errors
    /// The name is taken (another process created it first), or the SDDL is invalid.
    pub fn bind(name: &str, sddl: Option<&str>) -> Result<Pipe, ListenError> {
        let path = PathBuf::from(name);
        let err = |source: io::Error| ListenError::Io {
            path: path.clone(),
            source,
        };
        let sddl = match sddl {
            Some(s) => s.to_owned(),
            None => format!(
                "D:P(A;;GA;;;{})(A;;GA;;;SY)",
                current_user_sid().map_err(err)?
            ),
        };
        let descriptor = Descriptor::from_sddl(&sddl).map_err(|e| ListenError::Io {
            path: path.clone(),
            source: io::Error::new(e.kind(), format!("invalid SDDL {sddl:?}: {e}")),
        })?;
        let next = create(name, &descriptor, true).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
                ListenError::InUse(path.clone())
            } else {
                err(e)
            }
        })?;
        info!(pipe = name, sddl = %sddl, "listening on a named pipe");
        Ok(Pipe {
            name: name.to_owned(),
            descriptor,
            next,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a client. Cancel-safe: the waiting instance stays in place.
    ///
    /// # Errors
    /// Creating the next instance failed.
    pub async fn accept(&mut self) -> io::Result<(NamedPipeServer, Option<PeerCred>)> {
        if let Err(e) = self.next.connect().await {
            // A client that came and went before the connect (ERROR_NO_DATA)
            // leaves this instance unusable: replace it, or every later accept
            // would fail on it and clients would find the pipe busy forever.
            self.next = create(&self.name, &self.descriptor, false)?;
            return Err(e);
        }
        // The next instance exists before this one is handed out, so a client
        // always finds one waiting and no other process can slip in a server.
        let next = create(&self.name, &self.descriptor, false)?;
        let conn = std::mem::replace(&mut self.next, next);
        let mut pid = 0u32;
        // SAFETY: `conn` owns a live pipe handle; `pid` is a valid out-pointer.
        let ok = unsafe { GetNamedPipeClientProcessId(conn.as_raw_handle() as HANDLE, &mut pid) };
        let pid = (ok != 0).then(|| i32::try_from(pid).ok()).flatten();
        Ok((
            conn,
            Some(PeerCred {
                uid: None,
                gid: None,
                pid,
                groups: None,
            }),
        ))
    }
}

fn create(name: &str, descriptor: &Descriptor, first: bool) -> io::Result<NamedPipeServer> {
    let mut attrs = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: 0,
    };
    let mut opts = ServerOptions::new();
    opts.first_pipe_instance(first).reject_remote_clients(true);
    // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor
    // (owned by `descriptor`) outlives this call, which is all
    // CreateNamedPipeW reads it for.
    unsafe {
        opts.create_with_security_attributes_raw(
            name,
            (&mut attrs as *mut SECURITY_ATTRIBUTES).cast::<c_void>(),
        )
    }
}

/// Opens the gateway's pipe as a client, at identification level only: the
/// server may learn who we are but can never act as us.
///
/// # Errors
/// No such pipe, or access denied by its DACL.
pub async fn connect_pipe(name: &str) -> io::Result<NamedPipeClient> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ClientOptions::new()
            .security_qos_flags(SECURITY_IDENTIFICATION)
            .open(name)
        {
            Ok(c) => return Ok(c),
            // Every instance is busy for a moment; the server creates another.
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{name}: every pipe instance stayed busy for 10 s"),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

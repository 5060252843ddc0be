//! The live client connections, so that what changes after a handshake can
//! still reach them: a reloaded CRL or trust bundle re-verifies every live
//! client certificate, and a connection whose certificate no longer verifies is
//! closed gracefully (GOAWAY, in-flight calls drain within a bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio::sync::Notify;
use tracing::warn;

struct Entry {
    chain: Vec<CertificateDer<'static>>,
    client: String,
    close: Arc<Notify>,
}

/// Registry of live connections.
#[derive(Default)]
pub struct Conns {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
    /// Clients whose connection was closed for a reset flood, and when.
    floods: Mutex<HashMap<String, Instant>>,
}

/// How long a client that flooded keeps the strict reset budget on its new
/// connections: reconnecting after each close would otherwise buy it another
/// full budget of cancelled backend calls per handshake.
pub const FLOOD_MEMORY: Duration = Duration::from_secs(600);
/// Clients remembered at most (the oldest are forgotten first).
const FLOOD_CLIENTS: usize = 4096;

/// Calls on one client connection, for the idle timeout: `started` moves with
/// every forwarded call, `in_flight` counts those whose response is not done.
#[derive(Default)]
pub struct Activity {
    pub started: AtomicU64,
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Activity {
    /// Counts one forwarded call, in flight until the guard is dropped.
    pub fn call(&self) -> crate::grpc::InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        crate::grpc::InFlight::new(&self.in_flight)
    }
}

/// Removes the connection from the registry when dropped.
pub struct Registration {
    conns: Arc<Conns>,
    id: u64,
    pub close: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Conns {
    pub fn register(self: &Arc<Self>, chain: &[CertificateDer<'_>], client: &str) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let entry = Entry {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            client: client.to_owned(),
            close: close.clone(),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry);
        Registration {
            conns: self.clone(),
            id,
            close,
        }
    }

    /// Remembers that `client`'s connection was closed for a reset flood.
    pub fn flooded(&self, client: &str) {
        let mut floods = self.floods.lock().unwrap_or_else(|p| p.into_inner());
        if floods.len() >= FLOOD_CLIENTS && !floods.contains_key(client) {
            floods.retain(|_, at| at.elapsed() < FLOOD_MEMORY);
            if floods.len() >= FLOOD_CLIENTS {
                if let Some(oldest) = floods
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(c, _)| c.clone())
                {
                    floods.remove(&oldest);
                }
            }
        }
        floods.insert(client.to_owned(), Instant::now());
    }

    /// Whether `client` flooded within `FLOOD_MEMORY`.
    pub fn recently_flooded(&self, client: &str) -> bool {
        self.floods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client)
            .is_some_and(|at| at.elapsed() < FLOOD_MEMORY)
    }

    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-verifies every live client chain with `verifier`; asks those that fail
    /// to close. Returns how many were told to close.
    pub fn recheck(&self, verifier: &dyn ClientCertVerifier) -> usize {
        let now = UnixTime::now();
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for e in live.values() {
            if let Err(err) = verifies(verifier, &e.chain, now) {
                warn!(target: "ipcgate::tls", reason = %err, client.id = %e.client, "closing connection: its client certificate no longer verifies");
                e.close.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Whether `chain` (leaf first) verifies with `verifier` at `now`; an empty
/// chain (no certificate) is left to the handshake, which refuses it.
///
/// # Errors
/// Why it does not.
pub fn verifies(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    match chain.split_first() {
        Some((leaf, rest)) => verifier.verify_client_cert(leaf, rest, now).map(|_| ()),
        None => Ok(()),
    }
}

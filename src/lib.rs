//! ipcgate: mutual-TLS authentication and per-method gRPC authorization in front of
//! local services listening on Unix domain sockets.
//!
//! Data flows one way: [`listen`] accepts a socket and reads the peer's credentials,
//! [`tls`] completes the mTLS handshake, [`identity`] turns the verified chain into a
//! [`identity::Peer`] once per connection, [`http2`] serves the connection's calls in
//! its own task, and per call the tower stack in [`server`] checks the path
//! ([`path`]), asks the [`policy`], picks a [`route`] and hands the call to
//! [`proxy`], which forwards the body and trailers to the backend frame by frame,
//! never decoding them.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ipcgate::config::Config::load("gateway.toml".as_ref())?;
//! let gateway = ipcgate::Gateway::bind(config).await?;
//! gateway.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod alloc;
pub mod audit;
pub mod authority;
pub mod busy_poll;
pub mod ca;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod conns;
pub mod demo;
pub mod duration;
pub mod gate;
pub mod grpc;
pub mod http2;
pub mod identity;
pub mod listen;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod route;
pub mod server;
pub mod sidecar;
#[cfg(unix)]
pub mod systemd;
/// Windows has no systemd: nothing to notify, no sockets passed in.
#[cfg(not(unix))]
pub mod systemd {
    /// A socket passed in by the service manager; none exist here.
    pub enum Inherited {}

    pub fn notify(_state: &str) {}

    pub fn take_listeners() -> Vec<(String, Inherited)> {
        Vec::new()
    }
}
#[cfg(test)]
mod test_rng;
pub mod tls;

/// Code generated from `proto/demo/v1/echo.proto`: the example service used by the
/// demo, the tests and the benchmarks.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("demo.v1");
}

pub use server::Gateway;

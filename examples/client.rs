//! Calling a service behind ipcgate from Rust, verifying the gateway.
//!
//! ```text
//! cargo run --example client -- --socket /run/app/gateway.sock \
//!     --cert certs/alice.pem --key certs/alice.key --ca certs/ca.pem \
//!     [--server-spiffe spiffe://example.org/gateway] [--server-sha256 AB:CD:...] [--server-uid 990]
//! ```

use std::path::PathBuf;

use clap::Parser;
use ipcgate::client::{ServerTrust, Target};
use ipcgate::pb::echo_client::EchoClient;
use ipcgate::pb::EchoRequest;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Verify the gateway's chain with this CA bundle...
    #[arg(long)]
    ca: Option<PathBuf>,
    /// ...and its DNS name...
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// ...or its SPIFFE ID.
    #[arg(long)]
    server_spiffe: Option<String>,
    /// And/or pin its certificate.
    #[arg(long)]
    server_sha256: Option<String>,
    /// And/or require this account to own the socket.
    #[arg(long)]
    server_uid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let trust = ServerTrust {
        ca: a.ca.as_deref().map(ipcgate::tls::load_roots).transpose()?,
        spiffe_id: a.server_spiffe,
        sha256: a
            .server_sha256
            .as_deref()
            .map(ipcgate::client::parse_fingerprint)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    };
    let config = ipcgate::client::config_with(
        ipcgate::tls::load_certs(&a.cert)?,
        ipcgate::tls::load_key(&a.key)?,
        trust,
    )?;
    let channel = ipcgate::client::channel_to(Target {
        socket: a.socket,
        server_name: a.server_name,
        config,
        server_uid: a.server_uid,
    });
    let reply = EchoClient::new(channel)
        .unary(EchoRequest {
            payload: b"hello".to_vec(),
            ..Default::default()
        })
        .await?;
    println!("{:?}", String::from_utf8_lossy(&reply.get_ref().payload));
    Ok(())
}

//! Any byte stream from a client into the relay (`src/relay`): it may refuse
//! anything, and must never panic. Calls are forwarded to a backend whose dial
//! never completes or fails at once, or answered locally, so every path of
//! the engine that a client alone can reach is open.
#![no_main]

use std::time::Duration;

use ipcgate::relay::{Decision, Dial, Host, Options, Relay};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

struct FuzzHost;

impl Host for FuzzHost {
    type Io = tokio::io::DuplexStream;
    type Call = ();

    fn decide(&mut self, head: http::request::Parts) -> Decision<()> {
        match head.uri.path().len() % 3 {
            0 => Decision::Forward { backend: 0, head, call: () },
            1 => Decision::Forward { backend: 1, head, call: () },
            _ => Decision::Answer(http::Response::new(()).into_parts().0),
        }
    }

    fn dial(&mut self, backend: usize) -> Dial<Self::Io> {
        if backend == 0 {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Err(std::io::Error::other("down")) })
        }
    }

    fn backend_name(&self, _: usize) -> String {
        "fuzz".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let opts = Options::new(&ipcgate::config::Limits::default());
        let relay = Relay::new(server, FuzzHost, opts);
        let _ = tokio::time::timeout(Duration::from_millis(200), relay).await;
    });
});

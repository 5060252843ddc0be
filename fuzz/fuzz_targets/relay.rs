//! Any byte streams from a client (after its preface, which `read_preface`
//! takes) and from a backend into the relay (`src/relay`): it may refuse
//! anything, and must never panic. The input is
//! split in two by its first two bytes: what the client sends, then what the
//! backend sends once it is dialed (it starts with the backend's SETTINGS so
//! the fuzzer reaches calls on it). Calls are forwarded to that backend, to
//! one whose dial fails at once, or answered locally, so every path of the
//! engine that a client and a backend can reach is open.
#![no_main]

use std::time::Duration;

use ipcgate::relay::{Decision, Dial, Host, Options, Relay};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

struct FuzzHost {
    backend: Option<Vec<u8>>,
}

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
        match (backend, self.backend.take()) {
            (0, Some(bytes)) => Box::pin(async move {
                let (mut near, far) = tokio::io::duplex(1 << 20);
                tokio::spawn(async move {
                    let _ = near.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                    let _ = near.write_all(&bytes).await;
                    // Keep reading what the relay sends so it never blocks.
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut near, &mut sink).await;
                });
                Ok(far)
            }),
            _ => Box::pin(async { Err(std::io::Error::other("down")) }),
        }
    }

    fn backend_name(&self, _: usize) -> String {
        "fuzz".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let (client_bytes, backend_bytes) = match data {
        [a, b, rest @ ..] => {
            let at = (usize::from(*a) << 8 | usize::from(*b)).min(rest.len());
            rest.split_at(at)
        }
        _ => (data, &[][..]),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let _ = client.write_all(client_bytes).await;
        let opts = Options::new(&ipcgate::config::Limits::default());
        let host = FuzzHost { backend: Some(backend_bytes.to_vec()) };
        let relay = tokio::spawn(Relay::new(server, host, opts));
        // Give the backend's bytes time to arrive, then end the client.
        for _ in 0..32 {
            tokio::task::yield_now().await;
        }
        let _ = client.shutdown().await;
        // FUZZ_SHOW=1 prints what the client got (for checking seeds).
        let drained = async {
            let mut got = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got).await;
            if std::env::var_os("FUZZ_SHOW").is_some() {
                eprintln!("client got {got:02x?}");
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drained).await;
        match tokio::time::timeout(Duration::from_millis(200), relay).await {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        }
    });
});

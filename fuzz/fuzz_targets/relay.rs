//! Any byte streams from a client (after its preface, which `read_preface`
//! takes) and from a backend into the relay (`src/relay`): it may refuse
//! anything, and must never panic, nor keep running once the client is gone.
//! The input is split in two by its first two bytes: what the client sends,
//! then what the backend sends once it is dialed (after its SETTINGS, so the
//! fuzzer reaches calls on it). By the path's length a call goes to that
//! backend, to one whose dial fails at once, to one whose dial never
//! completes, or is answered locally, so every path of the engine that a
//! client and a backend can reach is open. Time is paused: a relay waiting
//! on a timer costs no wall time.
#![no_main]

use std::time::Duration;

use ipcgate::relay::{Decision, Dial, Host, Options, Relay};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct FuzzHost {
    backend: Option<Vec<u8>>,
}

impl Host for FuzzHost {
    type Io = tokio::io::DuplexStream;
    type Call = ();

    fn decide(&mut self, mut head: http::request::Parts) -> Decision<()> {
        // As the gateway does: the added field's name is stripped first.
        let added = http::HeaderName::from_static("x-forwarded-client-cert");
        head.headers.remove(&added);
        match head.uri.path().len() % 4 {
            3 => Decision::Answer(http::Response::new(()).into_parts().0),
            n => Decision::Forward {
                backend: n,
                head,
                added: std::sync::Arc::new([(added, http::HeaderValue::from_static("By=fuzz"))]),
                call: (),
            },
        }
    }

    fn dial(&mut self, backend: usize) -> Dial<Self::Io> {
        match backend {
            0 => {
                let Some(bytes) = self.backend.take() else {
                    return Box::pin(async { Err(std::io::Error::other("dialed once")) });
                };
                Box::pin(async move {
                    let (mut near, far) = tokio::io::duplex(1 << 20);
                    tokio::spawn(async move {
                        let _ = near.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                        let _ = near.write_all(&bytes).await;
                        // Keep reading what the relay sends so it never blocks.
                        let _ = tokio::io::copy(&mut near, &mut tokio::io::sink()).await;
                    });
                    Ok(far)
                })
            }
            1 => Box::pin(async { Err(std::io::Error::other("down")) }),
            _ => Box::pin(std::future::pending()),
        }
    }

    fn backend_name(&self, _: usize) -> String {
        "fuzz".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let (client_bytes, backend_bytes) = match data {
        [a, b, rest @ ..] => rest.split_at((usize::from(*a) << 8 | usize::from(*b)).min(rest.len())),
        _ => (data, &[][..]),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(client);
        // As the gateway runs it by default: socket-path authorities repaired.
        let opts = Options {
            repair_authority: true,
            ..Options::new(&ipcgate::config::Limits::default())
        };
        let host = FuzzHost { backend: Some(backend_bytes.to_vec()) };
        let relay = tokio::spawn(Relay::new(server, host, opts));
        let bytes = client_bytes.to_vec();
        tokio::spawn(async move {
            let _ = wr.write_all(&bytes).await;
            // Let the backend's bytes arrive, then end the client.
            for _ in 0..32 {
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        });
        // FUZZ_SHOW=1 prints what the client got (for checking seeds).
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
        if std::env::var_os("FUZZ_SHOW").is_some() {
            eprintln!("client got {got:02x?}");
        }
        // The client is gone: the relay must end (its own timers are 30 s
        // and more away, and paused time jumps to them when all is idle).
        match tokio::time::timeout(Duration::from_secs(5), relay).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the relay outlived its client by 5 s"),
        }
    });
});

//! Any byte stream from a client through the `:authority` filter: it may refuse
//! (an error), never panic, and never emit frames the server cannot parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut f = ipcgate::authority::NormalizeAuthority::new(&input[..]);
        let mut out = Vec::new();
        let _ = f.read_to_end(&mut out).await;
    });
});

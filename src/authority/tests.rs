use tokio::io::AsyncReadExt;

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = crate::relay::write::head_bytes(payload.len(), kind, flags, stream).to_vec();
    out.extend_from_slice(payload);
    out
}

async fn run(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut f = NormalizeAuthority::new(input);
    let mut out = Vec::new();
    f.read_to_end(&mut out).await?;
    Ok(out)
}

/// Splits the server-side byte stream into frames and decodes every header
/// block with a fresh decoder: the filter's output uses no HPACK state.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// (type, flags, stream, decoded headers) per frame.
fn server_view(out: &[u8]) -> Vec<(u8, u8, u32, Headers)> {
    assert!(out.starts_with(PREFACE));
    let mut rest = &out[PREFACE.len()..];
    let mut frames = Vec::new();
    let mut block = Vec::new();
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[9..9 + len];
        if kind == HEADERS || kind == CONTINUATION {
            block.extend_from_slice(payload);
            if flags & END_HEADERS != 0 {
                let headers = loona_hpack::Decoder::new().decode(&block).unwrap();
                frames.push((kind, flags, stream, headers));
                block.clear();
            }
        } else {
            frames.push((kind, flags, stream, Vec::new()));
        }
        rest = &rest[9 + len..];
    }
    assert!(rest.is_empty());
    frames
}

fn get<'a>(h: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), b"/demo.v1.Echo/Unary".to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
    ]
}

fn encode(enc: &mut loona_hpack::Encoder<'_>, h: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
}

#[tokio::test]
async fn socket_path_authorities_are_replaced_and_valid_ones_kept() {
    // The client's encoder indexes headers: later blocks refer to earlier ones,
    // so the filter must follow the client's HPACK state across blocks.
    let mut enc = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    for (i, auth) in [
        &b"%2Frun%2Fapp.sock"[..],
        b"/run/app.sock",
        b"localhost",
        b"gw.local:443",
        b"/run/app.sock",
    ]
    .iter()
    .enumerate()
    {
        let block = encode(&mut enc, &request(auth));
        input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &block));
        input.extend(frame(0x0, END_STREAM, 1 + 2 * i as u32, &[0, 0, 0, 0, 0]));
    }
    let out = run(&input).await.unwrap();
    let view = server_view(&out);
    let auths: Vec<_> = view
        .iter()
        .filter(|f| f.0 == HEADERS)
        .map(|f| get(&f.3, ":authority").unwrap().to_vec())
        .collect();
    assert_eq!(
        auths,
        vec![
            b"localhost".to_vec(),
            b"localhost".to_vec(),
            b"localhost".to_vec(),
            b"gw.local:443".to_vec(),
            b"localhost".to_vec()
        ]
    );
    // Everything else is unchanged, in order.
    for f in view.iter().filter(|f| f.0 == HEADERS) {
        assert_eq!(get(&f.3, ":path"), Some(&b"/demo.v1.Echo/Unary"[..]));
        assert_eq!(f.3.len(), 6);
        assert_eq!(f.1, END_HEADERS);
    }
    let kinds: Vec<_> = view.iter().map(|f| (f.0, f.2)).collect();
    assert_eq!(
        kinds,
        vec![
            (4, 0),
            (1, 1),
            (0, 1),
            (1, 3),
            (0, 3),
            (1, 5),
            (0, 5),
            (1, 7),
            (0, 7),
            (1, 9),
            (0, 9)
        ]
    );
}

#[tokio::test]
async fn continuation_padding_and_priority_are_handled() {
    let mut enc = loona_hpack::Encoder::new();
    let mut headers = request(b"/tmp/x.sock");
    headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = encode(&mut enc, &headers);
    let (a, b) = block.split_at(10);
    let mut input = PREFACE.to_vec();
    // HEADERS with padding and priority, then two CONTINUATIONs.
    let mut first = vec![3u8]; // pad length
    first.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
    first.extend_from_slice(a);
    first.extend_from_slice(&[0, 0, 0]);
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
    let (b1, b2) = b.split_at(b.len() / 2);
    input.extend(frame(CONTINUATION, 0, 1, b1));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, b2));
    let out = run(&input).await.unwrap();
    let view = server_view(&out);
    assert_eq!(view.len(), 1);
    let (kind, flags, stream, h) = &view[0];
    assert_eq!(
        (*kind, *stream),
        (CONTINUATION, 1),
        "a 40 KB block is split again"
    );
    assert_eq!(flags & END_HEADERS, END_HEADERS);
    assert_eq!(get(h, ":authority"), Some(&b"localhost"[..]));
    assert_eq!(get(h, "x-big").map(<[u8]>::len), Some(40_000));
    // END_STREAM is on the first (HEADERS) frame.
    assert_eq!(out[PREFACE.len() + 4] & END_STREAM, END_STREAM);
}

#[tokio::test]
async fn interleaving_and_garbage_are_errors_never_panics() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    input.extend(frame(0x0, 0, 1, &[1, 2, 3]));
    assert!(run(&input).await.is_err(), "DATA inside a header block");
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
    assert!(run(&input).await.is_err(), "bad HPACK");
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 1]));
    assert!(run(&input).await.is_err(), "padding longer than the frame");
    // Not HTTP/2 at all: passed through for h2 to refuse.
    assert_eq!(
        run(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(),
        b"GET / HTTP/1.1\r\n\r\n"
    );
    // An incomplete frame at EOF is passed through.
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&[0, 0, 9, 1, 4]);
    assert_eq!(run(&input).await.unwrap(), input);
}

/// A cheap stand-in for the fuzz target (`fuzz/fuzz_targets/authority.rs`):
/// thousands of random frame sequences, never a panic.
#[tokio::test]
async fn random_input_never_panics() {
    let mut r = crate::test_rng::Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = move || r.next();
    for _ in 0..3000 {
        let mut input = PREFACE.to_vec();
        for _ in 0..(next() % 6) {
            let kind = [HEADERS, CONTINUATION, 0, 4, 8][(next() % 5) as usize];
            let flags = (next() & 0x2d) as u8;
            let len = (next() % 40) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            input.extend(frame(kind, flags, (next() % 4) as u32, &payload));
        }
        let cut = (next() as usize) % (input.len() + 1);
        let _ = run(&input[..cut.max(PREFACE.len())]).await;
    }
}

#[tokio::test]
async fn a_connection_whose_first_request_is_fine_is_passed_through_byte_for_byte() {
    // Valid authority first: every byte reaches h2 as the client sent it,
    // HPACK indexing included; the filter does no more work on this connection.
    let mut enc = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    for (i, auth) in [&b"localhost"[..], b"localhost", b"/run/app.sock"]
        .iter()
        .enumerate()
    {
        let block = encode(&mut enc, &request(auth));
        // The first block split over a CONTINUATION, to show it is kept whole.
        if i == 0 {
            let (a, b) = block.split_at(block.len() / 2);
            input.extend(frame(HEADERS, 0, 1, a));
            input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        } else {
            input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &block));
        }
        input.extend(frame(0x0, END_STREAM, 1 + 2 * i as u32, &[0, 0, 0, 0, 0]));
    }
    let out = run(&input).await.unwrap();
    assert_eq!(out, input);
}

#[tokio::test]
async fn a_block_that_decodes_to_more_than_the_bound_is_refused() {
    // HPACK lets one byte stand for a whole table entry: 100,000 references to
    // a 4,000-byte entry would decode to 400 MB from 100 KB on the wire.
    let mut enc = loona_hpack::Encoder::new();
    let mut first = request(b"%2Frun%2Fapp.sock"); // puts the filter in rewriting mode
    first.push((b"x-big".to_vec(), vec![b'a'; 4000]));
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut enc, &first),
    ));
    let bomb = vec![0x80 | 62; 100_000]; // indexed: the newest table entry
    let chunks: Vec<&[u8]> = bomb.chunks(16 << 10).collect();
    for (i, c) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        input.extend(frame(kind, flags, 3, c));
    }
    let e = run(&input).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("256 KiB"), "{e}");
}

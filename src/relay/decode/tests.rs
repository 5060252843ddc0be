use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A literal field, not indexed, with a new name (raw strings).
fn lit(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, name.len() as u8];
    v.extend_from_slice(name);
    v.push(value.len() as u8);
    v.extend_from_slice(value);
    v
}

/// A literal with incremental indexing and a new name.
fn lit_indexed(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = lit(name, value);
    v[0] = 0x40;
    v
}

/// A block with its fields in a map, to look them up.
#[derive(Debug)]
struct Got {
    pseudo: Pseudo,
    fields: http::HeaderMap,
    over_size: bool,
}

fn got(b: Block) -> Got {
    let mut fields = http::HeaderMap::new();
    for (n, v) in b.fields {
        fields.append(n, v);
    }
    Got {
        pseudo: b.pseudo,
        fields,
        over_size: b.over_size,
    }
}

fn request(d: &mut Decoder, block: &[u8]) -> Result<Got, Error> {
    d.block(block, 16 << 10).map(got)
}

fn sizes(d: &Decoder) -> Vec<usize> {
    d.table.iter().map(|e| e.size).collect()
}

#[test]
fn rfc_7541_c3_and_c4_requests() {
    // C.3 (raw strings) and C.4 (the same requests, Huffman-coded).
    let runs = [
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
    ];
    for blocks in runs {
        let mut d = Decoder::default();
        let b = request(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(b.pseudo.method, Some(Method::GET));
        assert_eq!(b.pseudo.scheme.as_deref(), Some("http"));
        assert_eq!(b.pseudo.path.as_deref(), Some("/"));
        assert_eq!(b.pseudo.authority.as_deref(), Some("www.example.com"));
        assert!(b.fields.is_empty());
        assert_eq!(sizes(&d), [57]);
        let b = request(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(b.pseudo.authority.as_deref(), Some("www.example.com"));
        assert_eq!(b.fields["cache-control"], "no-cache");
        assert_eq!(sizes(&d), [53, 57]);
        let b = request(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(b.pseudo.scheme.as_deref(), Some("https"));
        assert_eq!(b.pseudo.path.as_deref(), Some("/index.html"));
        assert_eq!(b.pseudo.authority.as_deref(), Some("www.example.com"));
        assert_eq!(b.fields.len(), 1);
        assert_eq!(b.fields["custom-key"], "custom-value");
        assert_eq!(sizes(&d), [54, 53, 57]);
    }
}

#[test]
fn rfc_7541_c5_responses_evict_in_a_256_byte_table() {
    let mut d = Decoder::default();
    let mut block = hex("3fe1 01"); // size update to 256
    block.extend(hex(
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
    ));
    let b = request(&mut d, &block).unwrap();
    assert_eq!(b.pseudo.status, Some(StatusCode::FOUND));
    assert_eq!(b.fields["cache-control"], "private");
    assert_eq!(b.fields["date"], "Mon, 21 Oct 2013 20:13:21 GMT");
    assert_eq!(b.fields["location"], "https://www.example.com");
    assert_eq!(d.size, 222);
    let b = request(&mut d, &hex("4803 3330 37c1 c0bf")).unwrap();
    assert_eq!(b.pseudo.status, Some(StatusCode::TEMPORARY_REDIRECT));
    assert_eq!(b.fields["location"], "https://www.example.com");
    assert_eq!(d.size, 222);
    let b = request(
        &mut d,
        &hex(
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ),
    )
    .unwrap();
    assert_eq!(b.pseudo.status, Some(StatusCode::OK));
    assert_eq!(b.fields["date"], "Mon, 21 Oct 2013 20:13:22 GMT");
    assert_eq!(b.fields["content-encoding"], "gzip");
    assert_eq!(
        b.fields["set-cookie"],
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
    );
    assert_eq!(sizes(&d), [98, 52, 65]);
    assert_eq!(d.size, 215);
}

#[test]
fn encoding_errors_fail_the_connection() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("index 0", vec![0x80]),
        ("index past the static table, none dynamic", vec![0x80 | 62]),
        ("a name index past the table", vec![0x4f, 0x7f, 0x01]),
        ("size update over 4096", hex("3fe2 1f")),
        (
            "an integer of 5 continuation bytes",
            hex("ff ff ff ff ff 00"),
        ),
        ("an integer cut short", hex("ff ff")),
        ("a string longer than the block", vec![0x00, 0x05, b'a']),
        ("a name without its value", vec![0x00, 0x01, b'a']),
        (
            "bad Huffman padding (a zero bit)",
            vec![0x00, 0x01, b'a', 0x81, 0x18],
        ),
        (
            "Huffman EOS",
            vec![0x00, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for (what, block) in cases {
        let mut d = Decoder::default();
        assert_eq!(
            request(&mut d, &block).unwrap_err(),
            Error::Compression,
            "{what}"
        );
    }
    // A size update after a field (RFC 7541 §4.2).
    let mut d = Decoder::default();
    assert_eq!(
        request(&mut d, &hex("82 3f e1 01")).unwrap_err(),
        Error::Compression
    );
    // Two at the start are fine; the table follows the last.
    let mut d = Decoder::default();
    let mut block = hex("20 3f e1 01");
    block.extend(lit_indexed(b"x-a", b"1"));
    request(&mut d, &block).unwrap();
    assert_eq!((d.max, d.size), (256, 36));
    // A size update to 0 empties it.
    request(&mut d, &[0x20]).unwrap();
    assert_eq!((d.max, d.size, d.table.len()), (0, 0, 0));
}

#[test]
fn malformed_fields_fail_the_stream_but_keep_the_table() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("upper-case name", lit_indexed(b"X-Role", b"admin")),
        ("a name with a colon", lit_indexed(b"x:role", b"admin")),
        ("a name with a space", lit_indexed(b"x role", b"admin")),
        ("an empty name", lit_indexed(b"", b"admin")),
        ("connection", lit_indexed(b"connection", b"close")),
        ("keep-alive", lit_indexed(b"keep-alive", b"1")),
        ("proxy-connection", lit_indexed(b"proxy-connection", b"1")),
        (
            "transfer-encoding",
            lit_indexed(b"transfer-encoding", b"chunked"),
        ),
        ("upgrade", lit_indexed(b"upgrade", b"h2c")),
        ("te other than trailers", lit_indexed(b"te", b"gzip")),
        ("a NUL in a value", lit_indexed(b"x-role", b"ad\0min")),
        ("a CR in a value", lit_indexed(b"x-role", b"ad\rmin")),
        ("a LF in a value", lit_indexed(b"x-role", b"ad\nmin")),
        ("a leading space", lit_indexed(b"x-role", b" admin")),
        ("a trailing tab", lit_indexed(b"x-role", b"admin\t")),
        (":protocol", lit_indexed(b":protocol", b"websocket")),
        ("an unknown pseudo-header", lit_indexed(b":role", b"admin")),
        (
            "a method that is no token",
            lit_indexed(b":method", b"GE T"),
        ),
        (
            "a path with a control byte",
            lit_indexed(b":path", b"/a\x01"),
        ),
        ("a path not UTF-8", lit_indexed(b":path", b"/\xff")),
        (
            "a status that is no number",
            lit_indexed(b":status", b"2x0"),
        ),
    ];
    for (what, field) in cases {
        let mut d = Decoder::default();
        let mut block = hex("8386");
        block.extend(&field);
        assert_eq!(
            request(&mut d, &block).unwrap_err(),
            Error::Malformed,
            "{what}"
        );
        // The entry went into the table all the same: the next block
        // refers to it by index 62, and is as malformed.
        assert_eq!(d.table.len(), 1, "{what}");
        assert_eq!(
            request(&mut d, &[0x80 | 62]).unwrap_err(),
            Error::Malformed,
            "{what}"
        );
        // A block after it that does not use it is fine.
        request(&mut d, &hex("8386")).unwrap();
    }
    // te: trailers is fine.
    let mut d = Decoder::default();
    let b = request(&mut d, &lit(b"te", b"trailers")).unwrap();
    assert_eq!(b.fields["te"], "trailers");
    // A literal naming a malformed entry's name with a good value is fine
    // (the value was bad, not the name).
    let mut d = Decoder::default();
    request(&mut d, &lit_indexed(b"x-role", b" admin")).unwrap_err();
    let b = request(&mut d, &[0x0f, 62 - 15, 5, b'a', b'd', b'm', b'i', b'n']).unwrap();
    assert_eq!(b.fields["x-role"], "admin");
}

#[test]
fn pseudo_header_order_and_repeats() {
    let mut d = Decoder::default();
    // :method after a regular field.
    let mut block = lit(b"x-a", b"1");
    block.push(0x83);
    assert_eq!(request(&mut d, &block).unwrap_err(), Error::Malformed);
    // :path twice.
    assert_eq!(
        request(&mut d, &hex("84 85")).unwrap_err(),
        Error::Malformed
    );
    // :method twice, even with the same value.
    assert_eq!(
        request(&mut d, &hex("83 83")).unwrap_err(),
        Error::Malformed
    );
    // Regular fields repeat freely.
    let mut block = hex("83 86 84");
    block.extend(lit(b"x-a", b"1"));
    block.extend(lit(b"x-a", b"2"));
    let b = request(&mut d, &block).unwrap();
    let all: Vec<_> = b.fields.get_all("x-a").iter().collect();
    assert_eq!(all, ["1", "2"]);
}

#[test]
fn an_over_size_list_is_flagged_and_the_table_kept() {
    let mut d = Decoder::default();
    let mut block = hex("83 86 84");
    block.extend(lit_indexed(b"x-big", &[b'a'; 100]));
    block.extend(lit(b"x-after", b"1"));
    // :method POST 42, :scheme http 43, :path / 37, x-big 137: 259.
    let b = d.block(&block, 200).map(got).unwrap();
    assert!(b.over_size);
    assert!(b.fields.get("x-after").is_none());
    assert_eq!(sizes(&d), [137]);
    let b = d.block(&hex("83 86 84"), 200).map(got).unwrap();
    assert!(!b.over_size);
    let b = d.block(&[0x80 | 62], 200).map(got).unwrap();
    assert_eq!(b.fields["x-big"].len(), 100);
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut d = Decoder::default();
    request(&mut d, &lit_indexed(b"x-a", b"1")).unwrap();
    assert_eq!(d.table.len(), 1);
    // A 4,100-byte value (raw, with a 2-byte length prefix).
    let mut block = vec![0x40, 3, b'x', b'-', b'b', 0x7f];
    let mut n = 4100 - 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend(std::iter::repeat_n(b'v', 4100));
    let b = request(&mut d, &block).unwrap();
    assert_eq!(b.fields["x-b"].len(), 4100);
    assert_eq!((d.table.len(), d.size), (0, 0));
    assert_eq!(
        request(&mut d, &[0x80 | 62]).unwrap_err(),
        Error::Compression
    );
}

#[test]
fn a_repeated_path_literal_reads_the_same_every_time() {
    // h2 sends `:path` as a literal without indexing, the same bytes each
    // call of a method; the decoder keeps the last one decoded.
    let mut d = Decoder::default();
    for p in ["/a.S/M", "/a.S/M", "/b.S/N", "/a.S/M", "/a.S/M"] {
        let mut block = hex("83 86");
        block.extend([0x04, p.len() as u8]);
        block.extend(p.as_bytes());
        let b = request(&mut d, &block).unwrap();
        assert_eq!(b.pseudo.path.as_deref(), Some(p));
    }
    // The same path Huffman-coded ("/a": 011000 00011, padded) is another
    // encoding, and reads the same.
    let b = request(&mut d, &hex("83 86 04 82 60 7f")).unwrap();
    assert_eq!(b.pseudo.path.as_deref(), Some("/a"));
    let b = request(&mut d, &hex("83 86 04 02 2f 61")).unwrap();
    assert_eq!(b.pseudo.path.as_deref(), Some("/a"));
    // A malformed path kept is as malformed the second time.
    for _ in 0..2 {
        let block = [0x83, 0x86, 0x04, 3, b'/', 1, b'a'];
        assert_eq!(request(&mut d, &block).unwrap_err(), Error::Malformed);
    }
    // An indexed literal is not the kept one, and still enters the table.
    let b = request(&mut d, &hex("83 86 44 02 2f 61")).unwrap();
    assert_eq!(b.pseudo.path.as_deref(), Some("/a"));
    assert_eq!(sizes(&d), [5 + 2 + 32]);
}

#[test]
fn never_indexed_fields_stay_sensitive() {
    let mut d = Decoder::default();
    // authorization (static name 23), never indexed; x-a not indexed.
    let mut block = hex("83 86 84 1f 08 06");
    block.extend(b"secret");
    block.extend(lit(b"x-a", b"1"));
    let b = request(&mut d, &block).unwrap();
    assert!(b.fields["authorization"].is_sensitive());
    assert!(!b.fields["x-a"].is_sensitive());
    assert!(d.table.is_empty());
}

/// A literal with indexing: `name` (static index) and a value of `len` bytes.
fn big_entry(name_index: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0x40 | name_index, 0x7f];
    let mut n = len - 127;
    while n >= 128 {
        b.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    b.push(n as u8);
    b.extend(std::iter::repeat_n(b'A', len));
    b
}

#[test]
fn a_block_decoding_past_four_times_the_limit_fails_the_connection() {
    // One 4 KiB entry, then one-byte references to it: each would cost a
    // 4 KiB copy for a long `:method` (an extension method owns its bytes).
    for name_index in [2u8, 58] {
        let mut d = Decoder::default();
        let mut block = big_entry(name_index, 4000);
        block.extend(std::iter::repeat_n(0x80 | 62, 60_000));
        assert_eq!(d.block(&block, 16 << 10).unwrap_err(), Error::TooLarge);
    }
    // Up to four times, it is an over-size block (431), not an error.
    let mut d = Decoder::default();
    let mut block = big_entry(58, 4000);
    block.extend(std::iter::repeat_n(0x80 | 62, 14));
    let b = d.block(&block, 16 << 10).map(got).unwrap();
    assert!(b.over_size);
}

#[test]
fn a_block_keeps_at_most_8192_fields() {
    // `a:` is 33 bytes in the list: 9,000 of them stay under a 1 MiB limit.
    let mut d = Decoder::default();
    let mut block = lit_indexed(b"a", b"");
    block.extend(std::iter::repeat_n(0x80 | 62, 8999));
    let b = d.block(&block, 1 << 20).unwrap();
    assert!(b.over_size);
    assert_eq!(b.fields.len(), 8192);
}

#[test]
fn white_space_at_the_ends_is_refused_from_clients_only() {
    for value in [&b" x"[..], b"x ", b"\tx", b"x\t", b" "] {
        let mut block = hex("83 86 84");
        block.extend(lit(b"grpc-message", value));
        assert_eq!(
            Decoder::new(true).block(&block, 1024).unwrap_err(),
            Error::Malformed,
            "{value:?}"
        );
        let b = Decoder::new(false).block(&block, 1024).map(got).unwrap();
        assert_eq!(b.fields["grpc-message"].as_bytes(), value);
    }
    // Inside a value, it is fine either way.
    let b = request(&mut Decoder::default(), &lit(b"grpc-message", b"a b\tc")).unwrap();
    assert_eq!(b.fields["grpc-message"], "a b\tc");
    // Pseudo-headers too; and DEL in one.
    for (name, value) in [(&b":path"[..], &b"/a "[..]), (b":authority", b"a\x7f")] {
        let block = lit(name, value);
        assert_eq!(
            request(&mut Decoder::default(), &block).unwrap_err(),
            Error::Malformed,
            "{value:?}"
        );
    }
}

#[test]
fn an_entry_named_by_a_dynamic_entry_has_that_names_size() {
    let mut d = Decoder::default();
    request(&mut d, &lit_indexed(b"x-abc", b"1")).unwrap();
    // Name index 62 (x-abc), value "12", indexed: 5 + 2 + 32.
    let b = request(&mut d, &[0x40 | 62, 2, b'1', b'2']).unwrap();
    assert_eq!(b.fields["x-abc"], "12");
    assert_eq!(sizes(&d), [39, 38]);
}

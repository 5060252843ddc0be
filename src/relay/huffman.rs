//! Huffman decoding of HPACK string literals (RFC 7541 §5.2, Appendix B).
//!
//! The code is canonical: within a length, codes follow symbol order, and
//! each length's codes come right after the shorter ones'. So its lengths
//! are the whole table, and a symbol is found by comparing the next 32 bits,
//! left-aligned, with where each length's codes end: the 5-to-8-bit codes of
//! the characters gRPC metadata is made of take one to four comparisons.

/// Code length of each symbol, 0..=255 and EOS (256): RFC 7541 Appendix B's
/// "len in bits" column.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0..
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16..
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32..
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48..
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64..
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80..
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96..
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112..
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128..
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144..
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160..
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176..
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192..
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208..
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224..
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240..
    30, // EOS
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The decoding tables, built from [`LENGTHS`] at compile time.
struct Tables {
    /// Symbols by (length, symbol): canonical code order.
    syms: [u16; 257],
    /// The lengths in use, shortest first (`n` of them).
    len: [u8; MAX_LEN],
    /// For each length in use: one past its last code, left-aligned in 32
    /// bits (a `u64`: the last one is 2^32).
    limit: [u64; MAX_LEN],
    /// Its first code, and that code's place in `syms`.
    first: [u32; MAX_LEN],
    offset: [u16; MAX_LEN],
}

const TABLES: Tables = build();

const fn build() -> Tables {
    let mut count = [0u32; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut t = Tables {
        syms: [0; 257],
        len: [0; MAX_LEN],
        limit: [0; MAX_LEN],
        first: [0; MAX_LEN],
        offset: [0; MAX_LEN],
    };
    // Canonical codes: each length starts where the shorter ones ended,
    // shifted one bit (RFC 1951 §3.2.2's construction).
    let mut start = [0u32; MAX_LEN + 1];
    let mut place = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut at = 0u16;
    let mut k = 0;
    let mut l = 1;
    while l <= MAX_LEN {
        code = (code + count[l - 1]) << 1;
        start[l] = code;
        place[l] = at;
        if count[l] > 0 {
            t.len[k] = l as u8;
            t.first[k] = code;
            t.offset[k] = at;
            t.limit[k] = ((code + count[l]) as u64) << (32 - l);
            k += 1;
        }
        at += count[l] as u16;
        l += 1;
    }
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        t.syms[place[l] as usize] = s as u16;
        place[l] += 1;
        s += 1;
    }
    // The longest codes end at all ones.
    assert!(t.limit[k - 1] == 1 << 32);
    t
}

/// A Huffman-coded string that is not one: an EOS symbol in it, or padding
/// longer than 7 bits or not all ones (RFC 7541 §5.2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

/// Appends the decoding of `src` to `dst`.
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), Invalid> {
    let t = &TABLES;
    dst.reserve(src.len() * 8 / 5);
    // Unconsumed bits, right-aligned: `n` of them.
    let mut acc: u64 = 0;
    let mut n: u32 = 0;
    let mut src = src.iter();
    loop {
        while n <= 56 {
            let Some(&b) = src.next() else { break };
            acc = (acc << 8) | u64::from(b);
            n += 8;
        }
        if n == 0 {
            return Ok(());
        }
        // The next 32 bits, left-aligned; past the end, ones (which make
        // no code shorter than 30 bits).
        let peek = if n >= 32 {
            (acc >> (n - 32)) & 0xffff_ffff
        } else {
            ((acc << (32 - n)) | ((1 << (32 - n)) - 1)) & 0xffff_ffff
        };
        let mut k = 0;
        while peek >= t.limit[k] {
            k += 1;
        }
        let len = u32::from(t.len[k]);
        if len > n {
            // What is left is no whole code: it must be padding.
            let ones = (1u64 << n) - 1;
            return if n <= 7 && acc & ones == ones {
                Ok(())
            } else {
                Err(Invalid)
            };
        }
        let code = (peek >> (32 - len)) as u32;
        let sym = t.syms[usize::from(t.offset[k]) + (code - t.first[k]) as usize];
        if sym == EOS {
            return Err(Invalid);
        }
        dst.push(sym as u8);
        n -= len;
        acc &= (1 << n) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoder the tables imply: (code, length) per symbol.
    fn codes() -> Vec<(u32, u32)> {
        let t = &TABLES;
        let mut out = vec![(0, 0); 257];
        let mut k = 0;
        let mut i = 0;
        while i < 257 {
            while usize::from(t.offset[k]) + (t.limit[k] >> (32 - t.len[k])) as usize
                - t.first[k] as usize
                <= i
            {
                k += 1;
            }
            let sym = t.syms[i] as usize;
            let code = t.first[k] + (i - usize::from(t.offset[k])) as u32;
            out[sym] = (code, u32::from(t.len[k]));
            i += 1;
        }
        out
    }

    fn encode(s: &[u8], pad: u32) -> Vec<u8> {
        let c = codes();
        let mut bits: Vec<bool> = Vec::new();
        for &b in s {
            let (code, len) = c[b as usize];
            bits.extend((0..len).rev().map(|i| code >> i & 1 == 1));
        }
        let fill = (8 - bits.len() % 8) % 8 + pad as usize;
        bits.extend(std::iter::repeat_n(true, fill));
        bits.chunks(8)
            .map(|c| c.iter().fold(0u8, |a, &b| a << 1 | u8::from(b)))
            .collect()
    }

    #[test]
    fn known_codes_from_the_rfc() {
        let c = codes();
        // RFC 7541 Appendix B: '0' 00000, 'a' 00011, ' ' 010100, '!'
        // 11111110|00, 0 11111111|11000, 255 11111111|11111111|11101110,
        // EOS 30 ones.
        assert_eq!(c[b'0' as usize], (0b00000, 5));
        assert_eq!(c[b'a' as usize], (0b00011, 5));
        assert_eq!(c[b' ' as usize], (0b010100, 6));
        assert_eq!(c[b'!' as usize], (0x3f8, 10));
        assert_eq!(c[0], (0x1ff8, 13));
        assert_eq!(c[255], (0x3ffffee, 26));
        assert_eq!(c[256], (0x3fffffff, 30));
        // RFC 7541 C.4.1: "www.example.com".
        let mut out = Vec::new();
        let wire = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        decode(&wire, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(encode(b"www.example.com", 0), wire);
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for s in [
            all.clone(),
            all.iter().rev().copied().collect(),
            b"".to_vec(),
        ] {
            let mut out = Vec::new();
            decode(&encode(&s, 0), &mut out).unwrap();
            assert_eq!(out, s);
        }
        for b in 0..=255u8 {
            for n in 1..5 {
                let s = vec![b; n];
                let mut out = Vec::new();
                decode(&encode(&s, 0), &mut out).unwrap();
                assert_eq!(out, s);
            }
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // Eight bits of padding (a whole byte of ones).
        let mut out = Vec::new();
        assert_eq!(decode(&encode(b"ab", 8), &mut out), Err(Invalid));
        assert_eq!(decode(&[0xff], &mut out), Err(Invalid));
        // Padding that is not all ones: 'a' (00011) then 000.
        assert_eq!(decode(&[0b0001_1000], &mut out), Err(Invalid));
        // 'a' then 111: fine.
        out.clear();
        decode(&[0b0001_1111], &mut out).unwrap();
        assert_eq!(out, b"a");
        // EOS itself (30 ones) then padding.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut out), Err(Invalid));
        // 'a' then EOS.
        let wire = [0b0001_1111, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode(&wire, &mut out), Err(Invalid));
    }
}

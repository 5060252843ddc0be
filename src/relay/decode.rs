//! HPACK decoding (RFC 7541) of the header blocks the relay reads, with
//! RFC 9113's rules for the fields in them (§8.2, §8.3).
//!
//! h2's decoder was the largest cost left per call (7.4k of 30.4k
//! instructions at 4×64, docs/PERFORMANCE.md): it re-validates and re-parses
//! a field each time the peer sends it indexed. Here a table entry keeps its
//! field parsed and judged — a `HeaderName` and `HeaderValue`, a `Method`, a
//! `:path` checked as UTF-8, or the verdict that it is malformed — so an
//! indexed field, most of a gRPC connection's fields after its first call,
//! costs a clone.
//!
//! A malformed field fails its block (a stream error), but only once the
//! whole block is decoded: the table must stay the one the peer's encoder
//! has. Anything the encoding itself gets wrong fails the connection
//! (COMPRESSION_ERROR).

use std::collections::VecDeque;

use bytes::Bytes;
use h2::frame::{BytesStr, Pseudo};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};

use super::hpack::{ENTRY_OVERHEAD, STATIC, TABLE};
use super::huffman;

/// Continuation bytes of an integer: 4 take it past 2^28, far past any
/// length or index a block may hold.
const MAX_INT_BYTES: u32 = 4;
/// A block whose decoded list (every field counted, kept or not) passes this
/// many times the limit fails the connection, as in h2: a one-byte index can
/// stand for a 4 KiB entry, so a 64 KiB block could otherwise decode to
/// 250 MB of work.
const LIST_FACTOR: usize = 4;
/// Fields kept in one block: past it, the block is over size (a `HeaderMap`
/// holds at most 24,576, whatever the configured list limit allows).
const MAX_FIELDS: usize = 8192;

/// Why a block was not decoded: the first two fail the connection (its
/// HPACK state is lost, or the block is abuse), the last only the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Error {
    Compression,
    /// The decoded list went past `LIST_FACTOR` times the limit.
    TooLarge,
    /// The block decoded, but a field in it breaks RFC 9113's rules.
    Malformed,
}

/// Regular fields a block is given room for at its first (a gRPC request
/// has five or six).
const FIELDS_GUESS: usize = 8;

/// A decoded header block (the tests' view; the relay decodes into its
/// frame's own head).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub pseudo: Pseudo,
    /// Regular fields in the order read (a `HeaderMap` costs ~1.5k
    /// instructions a call to build and drop, and only a request's needs one).
    pub fields: Vec<(HeaderName, HeaderValue)>,
    /// The decoded list exceeded the limit: fields past it were dropped.
    pub over_size: bool,
}

/// What a field's name is.
#[derive(Clone, Debug)]
enum Name {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
    /// `:protocol` (extended CONNECT, which the relay does not offer) and
    /// unknown pseudo-headers, and names RFC 9113 forbids: any use of such a
    /// name makes a block malformed.
    Refused,
    Regular(HeaderName),
}

/// A field, judged.
#[derive(Clone, Debug)]
enum Field {
    Method(Method),
    Scheme(BytesStr),
    Authority(BytesStr),
    Path(BytesStr),
    Status(StatusCode),
    Regular(HeaderName, HeaderValue),
    Malformed,
}

#[derive(Debug)]
struct Entry {
    name: Name,
    /// RFC 7541 §4.1's size: name and value lengths plus 32.
    size: usize,
    /// Name length (for a literal naming this entry).
    name_len: usize,
    field: Field,
}

pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// The last `:path` literal not indexed: as encoded, judged, and its
    /// length.
    last_path: Option<(Vec<u8>, Field, usize)>,
    /// White space at either end of a value is refused (a client's), or
    /// let through (a backend's: grpc-go and grpc-java send `grpc-message`
    /// as written, trailing space and all, and h2 let it through).
    strict: bool,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(true)
    }
}

/// A block being built, in the caller's place (a header block's pseudo-header
/// fields are a few hundred bytes: returned by value, they were copied three
/// times on the way into the frame's box).
struct Building<'a> {
    pseudo: &'a mut Pseudo,
    fields: &'a mut Vec<(HeaderName, HeaderValue)>,
    over_size: bool,
    list_size: usize,
    max_list: usize,
    regular_seen: bool,
    malformed: bool,
}

impl Building<'_> {
    /// Adds a field; it is cloned only if it is kept.
    fn add(&mut self, field: &Field, size: usize) -> Result<(), Error> {
        self.list_size += size;
        if self.list_size > self.max_list {
            self.over_size = true;
            if self.list_size > self.max_list.saturating_mul(LIST_FACTOR) {
                return Err(Error::TooLarge);
            }
        }
        if self.fields.len() >= MAX_FIELDS {
            self.over_size = true;
        }
        let p = &mut *self.pseudo;
        let taken = match field {
            Field::Malformed => {
                self.malformed = true;
                return Ok(());
            }
            Field::Regular(..) => {
                self.regular_seen = true;
                false
            }
            Field::Method(_) => p.method.is_some(),
            Field::Scheme(_) => p.scheme.is_some(),
            Field::Authority(_) => p.authority.is_some(),
            Field::Path(_) => p.path.is_some(),
            Field::Status(_) => p.status.is_some(),
        };
        // A pseudo-header twice, or after a regular field (RFC 9113 §8.3).
        if taken || (self.regular_seen && !matches!(field, Field::Regular(..))) {
            self.malformed = true;
        }
        if self.over_size || self.malformed {
            return Ok(());
        }
        match field {
            Field::Method(m) => p.method = Some(m.clone()),
            Field::Scheme(s) => p.scheme = Some(s.clone()),
            Field::Authority(s) => p.authority = Some(s.clone()),
            Field::Path(s) => p.path = Some(s.clone()),
            Field::Status(s) => p.status = Some(*s),
            Field::Regular(n, v) => {
                if self.fields.capacity() == 0 {
                    // One allocation for a gRPC head's fields, where pushing
                    // would allocate at 4 and move them at 5.
                    self.fields.reserve(FIELDS_GUESS);
                }
                self.fields.push((n.clone(), v.clone()));
            }
            Field::Malformed => {}
        }
        Ok(())
    }
}

impl Decoder {
    /// A decoder for a client (`strict`) or a backend.
    pub(crate) fn new(strict: bool) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE,
            last_path: None,
            strict,
        }
    }

    /// Decodes one whole header block.
    #[cfg(test)]
    pub(crate) fn block(&mut self, src: &[u8], max_list: usize) -> Result<Block, Error> {
        let mut b = Block::default();
        b.over_size = self.block_into(src, max_list, &mut b.pseudo, &mut b.fields)?;
        Ok(b)
    }

    /// Decodes one whole header block into `pseudo` and `fields` (which
    /// start empty); `Ok(true)` if the list went past `max_list` (RFC 9113's
    /// header list size) or `MAX_FIELDS` fields: those past it are decoded
    /// for the table's sake but dropped.
    pub(crate) fn block_into(
        &mut self,
        mut src: &[u8],
        max_list: usize,
        pseudo: &mut Pseudo,
        fields: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Result<bool, Error> {
        let mut b = Building {
            pseudo,
            fields,
            over_size: false,
            list_size: 0,
            max_list,
            regular_seen: false,
            malformed: false,
        };
        let mut fields_seen = false;
        while let Some(&first) = src.first() {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let i = int(&mut src, 7)?;
                let e = self.entry(i)?;
                b.add(&e.field, e.size)?;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the block's
                // first field (§4.2), and within what SETTINGS allowed.
                if fields_seen {
                    return Err(Error::Compression);
                }
                let n = int(&mut src, 5)?;
                if n > TABLE {
                    return Err(Error::Compression);
                }
                self.max = n;
                self.evict(0);
                continue;
            } else {
                // A literal (§6.2): indexed (01), not indexed (0000) or never
                // indexed (0001).
                let indexing = first & 0x40 != 0;
                let i = int(&mut src, if indexing { 6 } else { 4 })?;
                let (name, name_len) = if i == 0 {
                    let raw = string(&mut src)?;
                    let len = raw.len();
                    (name(&raw), len)
                } else {
                    self.entry_name(i)?
                };
                let before = src;
                let (huffman, raw) = literal(&mut src)?;
                let encoded = &before[..before.len() - src.len()];
                // h2's encoder never indexes `:path`: a connection calling
                // one method sends the same literal every call. The last is
                // kept, judged, to spare the Huffman decoding, allocation
                // and checks.
                let keep = !indexing && matches!(name, Name::Path);
                let (mut field, value_len) = match &self.last_path {
                    Some((e, f, n)) if keep && e[..] == *encoded => (f.clone(), *n),
                    _ => {
                        let value = decode(huffman, raw)?;
                        let n = value.len();
                        let f = field(&name, value, self.strict);
                        if keep {
                            self.last_path = Some((encoded.to_vec(), f.clone(), n));
                        }
                        (f, n)
                    }
                };
                let size = name_len + value_len + ENTRY_OVERHEAD;
                if first & 0xf0 == 0x10 {
                    // Never indexed (§6.2.3): it stays so on the way on
                    // (§7.1.3), as the writer writes sensitive values.
                    if let Field::Regular(_, v) = &mut field {
                        v.set_sensitive(true);
                    }
                }
                if indexing {
                    self.insert(Entry {
                        name,
                        size,
                        name_len,
                        field: field.clone(),
                    });
                }
                b.add(&field, size)?;
            }
            fields_seen = true;
        }
        if b.malformed {
            return Err(Error::Malformed);
        }
        Ok(b.over_size)
    }

    /// The name at index `i`, and its length.
    fn entry_name(&self, i: usize) -> Result<(Name, usize), Error> {
        let e = self.entry(i)?;
        Ok((e.name.clone(), e.name_len))
    }

    fn entry(&self, i: usize) -> Result<&Entry, Error> {
        let i = i.checked_sub(1).ok_or(Error::Compression)?;
        let statics = &*STATIC_ENTRIES;
        statics
            .get(i)
            .or_else(|| self.table.get(i - statics.len()))
            .ok_or(Error::Compression)
    }

    fn insert(&mut self, e: Entry) {
        if e.size > self.max {
            // Larger than the table: it empties the table (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(e.size);
        self.size += e.size;
        self.table.push_front(e);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(e) = self.table.pop_back() else {
                break;
            };
            self.size -= e.size;
        }
    }
}

/// An integer with an `n`-bit prefix (§5.1).
fn int(src: &mut &[u8], n: u8) -> Result<usize, Error> {
    let (&first, rest) = src.split_first().ok_or(Error::Compression)?;
    *src = rest;
    let mask = (1usize << n) - 1;
    let mut v = usize::from(first) & mask;
    if v < mask {
        return Ok(v);
    }
    for k in 0..MAX_INT_BYTES {
        let (&b, rest) = src.split_first().ok_or(Error::Compression)?;
        *src = rest;
        v += usize::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Compression)
}

/// A string literal (§5.2), Huffman-coded or not, in a buffer of its own
/// (a table entry must not hold the connection's read buffer).
fn string(src: &mut &[u8]) -> Result<Bytes, Error> {
    let (huffman, s) = literal(src)?;
    decode(huffman, s)
}

/// A string literal as encoded: whether Huffman-coded, and its bytes.
fn literal<'a>(src: &mut &'a [u8]) -> Result<(bool, &'a [u8]), Error> {
    let huffman = src.first().is_some_and(|b| b & 0x80 != 0);
    let len = int(src, 7)?;
    if len > src.len() {
        return Err(Error::Compression);
    }
    let (s, rest) = src.split_at(len);
    *src = rest;
    Ok((huffman, s))
}

fn decode(huffman: bool, s: &[u8]) -> Result<Bytes, Error> {
    if huffman {
        let mut out = Vec::new();
        huffman::decode(s, &mut out).map_err(|_| Error::Compression)?;
        Ok(Bytes::from(out))
    } else {
        Ok(Bytes::copy_from_slice(s))
    }
}

/// A literal's name, judged (RFC 9113 §8.2.1, §8.3).
fn name(raw: &[u8]) -> Name {
    match raw {
        b":method" => Name::Method,
        b":scheme" => Name::Scheme,
        b":authority" => Name::Authority,
        b":path" => Name::Path,
        b":status" => Name::Status,
        // Upper case is refused, not folded: a name is sent in lower case.
        // HeaderName refuses the rest RFC 9113 does (controls, space,
        // colons, non-ASCII) and more: anything not an RFC 9110 token.
        _ if raw.iter().any(u8::is_ascii_uppercase) => Name::Refused,
        _ => HeaderName::from_bytes(raw).map_or(Name::Refused, Name::Regular),
    }
}

/// A field of `name` with `value`, judged (RFC 9113 §8.2.1, §8.2.2, §8.3).
fn field(name: &Name, value: Bytes, strict: bool) -> Field {
    // No NUL, CR or LF anywhere, nor, from a client, leading or trailing
    // white space (§8.2.1): a backend that trims it would see another value
    // than the policy matched (nghttp2 refuses it too).
    let edge_space = |v: &[u8]| {
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    };
    if strict && edge_space(&value) {
        return Field::Malformed;
    }
    let text = |v: Bytes| {
        if v.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return None;
        }
        BytesStr::try_from(v).ok()
    };
    match name {
        Name::Method => Method::from_bytes(&value).map_or(Field::Malformed, Field::Method),
        Name::Scheme => text(value).map_or(Field::Malformed, Field::Scheme),
        Name::Authority => text(value).map_or(Field::Malformed, Field::Authority),
        Name::Path => text(value).map_or(Field::Malformed, Field::Path),
        Name::Status => StatusCode::from_bytes(&value).map_or(Field::Malformed, Field::Status),
        Name::Refused => Field::Malformed,
        Name::Regular(n) => {
            // Connection-specific fields (§8.2.2).
            let connection = *n == header::CONNECTION
                || *n == header::TRANSFER_ENCODING
                || *n == header::UPGRADE
                || n.as_str() == "keep-alive"
                || n.as_str() == "proxy-connection"
                || (*n == header::TE && value != "trailers");
            if connection {
                return Field::Malformed;
            }
            HeaderValue::from_maybe_shared(value)
                .map_or(Field::Malformed, |v| Field::Regular(n.clone(), v))
        }
    }
}

/// The static table's entries, judged once.
static STATIC_ENTRIES: std::sync::LazyLock<Vec<Entry>> = std::sync::LazyLock::new(|| {
    STATIC
        .iter()
        .map(|&(n, v)| {
            let name = name(n.as_bytes());
            Entry {
                field: field(&name, Bytes::from_static(v.as_bytes()), true),
                name,
                size: n.len() + v.len() + ENTRY_OVERHEAD,
                name_len: n.len(),
            }
        })
        .collect()
});

#[cfg(test)]
mod tests;

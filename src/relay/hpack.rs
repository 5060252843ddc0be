//! HPACK encoding (RFC 7541) of the header blocks the relay writes.
//!
//! h2's encoder hashes every field into its table and Huffman-codes every
//! string it writes: about 620 instructions a field, a sixth of the gateway's
//! work per unary call (docs/PERFORMANCE.md). Both peers are local, where a
//! byte on the wire costs less than an instruction, so this one spends bytes
//! instead: strings go out raw (decoding them is a copy), and a field enters
//! the dynamic table only if it is likely to come again on the connection.
//! Such fields are found again by a scan of that table, which holds a handful
//! of entries (a connection's authority, content type, user agent, XFCC...).
//! Fields that change with every call (`grpc-timeout`, `grpc-message`) and
//! sensitive ones are written as literals that are never indexed.

use std::collections::VecDeque;

use h2::frame::Pseudo;
use http::{HeaderName, HeaderValue, Method, StatusCode};

/// A head's pseudo-header fields, borrowed from h2's `Pseudo` or from an
/// `http` request head.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) method: Option<&'a Method>,
    pub(super) scheme: Option<&'a str>,
    pub(super) authority: Option<&'a str>,
    pub(super) path: Option<&'a str>,
    pub(super) protocol: Option<&'a str>,
    pub(super) status: Option<StatusCode>,
}

impl<'a> View<'a> {
    pub(super) fn of(p: &'a Pseudo) -> View<'a> {
        View {
            method: p.method.as_ref(),
            scheme: p.scheme.as_deref(),
            authority: p.authority.as_deref(),
            path: p.path.as_deref(),
            protocol: p.protocol.as_ref().map(|p| p.as_str()),
            status: p.status,
        }
    }

    /// The fields h2's `Pseudo::request` makes of a head (without
    /// `:protocol`): no `:scheme` or `:path` for CONNECT, and an empty path
    /// written as `/` (`*` for OPTIONS).
    pub(super) fn request(head: &'a http::request::Parts) -> View<'a> {
        let uri = &head.uri;
        let (scheme, path) = if head.method == Method::CONNECT {
            (None, None)
        } else {
            let path = match uri.path_and_query().map_or("", |p| p.as_str()) {
                "" if head.method == Method::OPTIONS => "*",
                "" => "/",
                p => p,
            };
            (uri.scheme_str(), Some(path))
        };
        View {
            method: Some(&head.method),
            scheme,
            authority: uri.authority().map(|a| a.as_str()),
            path,
            protocol: None,
            status: None,
        }
    }
}

/// RFC 7541's default table size, every decoder's initial one: the largest
/// table the encoder uses, whatever the peer allows (so none has to be
/// announced), and the one the decoder allows (the relay never sends
/// SETTINGS_HEADER_TABLE_SIZE).
pub(super) const TABLE: usize = 4096;
/// What an entry costs beyond its name and value (RFC 7541 §4.1), also
/// counted in a header list's size (RFC 9113 §6.5.2).
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// One connection's encoder: a mirror of the peer decoder's dynamic table.
pub(super) struct Encoder {
    /// Oldest first; the newest is index 62.
    table: VecDeque<Entry>,
    /// The table's size by RFC 7541's count.
    size: usize,
    /// The table's maximum size: at most the peer's SETTINGS_HEADER_TABLE_SIZE.
    max: usize,
    /// Size updates owed at the start of the next block: the smallest maximum
    /// since the last block and the final one (RFC 7541 §4.2).
    update: Option<(usize, usize)>,
    /// Entries ever inserted: entry `i` of `table` is number
    /// `inserted - table.len() + i`, whatever was evicted since.
    inserted: usize,
    /// Where each field of a block was found last time (one more than its
    /// entry's number, 0 for none), by kind of block (request, response,
    /// trailers) and the field's place in it: a connection's blocks repeat
    /// their shape, so that entry is checked first and the scan is mostly
    /// skipped.
    hints: [[usize; HINTS]; 3],
    /// The block being encoded: its kind and the next field's place.
    cursor: (usize, usize),
}

/// Places in a block that have a hint.
const HINTS: usize = 16;

struct Entry {
    /// The name's bytes, then the value's.
    field: Box<[u8]>,
    name_len: usize,
    /// The field as it was given, when it came as `http` types. Held, their
    /// bytes stay where they are and never change (`Bytes` are shared
    /// read-only, or static), so a later field at the same addresses is this
    /// one, found without comparing bytes: a field the relay's decoder read
    /// indexed is a clone sharing its table entry's bytes, and XFCC is the
    /// connection's one value. (Two `memcmp`s per field were ~40 of a found
    /// field's ~150 instructions.) `field` stays beside it: an entry made of
    /// the held types alone, without the copy, cost ~450 more instructions
    /// per 1×1 call (`scripts/instr`, four runs a side).
    held: Option<(HeaderName, HeaderValue)>,
}

impl Entry {
    fn is(&self, name: &[u8], value: &[u8]) -> bool {
        if let Some((n, v)) = &self.held {
            if std::ptr::eq(n.as_str().as_bytes(), name) && std::ptr::eq(v.as_bytes(), value) {
                return true;
            }
        }
        self.name_len == name.len()
            && self.field.len() == name.len() + value.len()
            && self.field[..name.len()] == *name
            && self.field[name.len()..] == *value
    }

    fn size(&self) -> usize {
        self.field.len() + ENTRY_OVERHEAD
    }
}

/// How a field may be written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Found in, or added to, the dynamic table.
    Index,
    /// A literal the peer does not add to its table.
    Literal,
    /// A literal no intermediary may ever index (RFC 7541 §7.1.3).
    Never,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE,
            update: None,
            inserted: 0,
            hints: [[0; HINTS]; 3],
            cursor: (0, 0),
        }
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE. A smaller table takes effect at
    /// once (entries beyond it are gone from the peer's table as soon as it
    /// reads the size update this queues).
    pub(super) fn set_max_size(&mut self, limit: usize) {
        let max = limit.min(TABLE);
        if max == self.max {
            return;
        }
        self.max = max;
        self.evict(0);
        let low = self.update.map_or(max, |(low, _)| low.min(max));
        self.update = Some((low, max));
    }

    /// Appends the block for a head: pseudo-header fields first (RFC 9113
    /// §8.3), in h2's order.
    pub(super) fn block<'f>(
        &mut self,
        pseudo: View<'_>,
        fields: impl Iterator<Item = (&'f HeaderName, &'f HeaderValue)>,
        dst: &mut Vec<u8>,
    ) {
        if let Some((low, max)) = self.update.take() {
            if low < max {
                int(dst, 0x20, 5, low);
            }
            int(dst, 0x20, 5, max);
        }
        let kind = if pseudo.method.is_some() {
            0
        } else if pseudo.status.is_some() {
            1
        } else {
            2
        };
        self.cursor = (kind, 0);
        if let Some(m) = pseudo.method {
            match m.as_str() {
                "GET" => int(dst, 0x80, 7, 2),
                "POST" => int(dst, 0x80, 7, 3),
                m => self.field(b":method", m.as_bytes(), None, Mode::Index, dst),
            }
        }
        if let Some(s) = pseudo.scheme {
            match s {
                "http" => int(dst, 0x80, 7, 6),
                "https" => int(dst, 0x80, 7, 7),
                s => self.field(b":scheme", s.as_bytes(), None, Mode::Index, dst),
            }
        }
        if let Some(a) = pseudo.authority {
            self.field(b":authority", a.as_bytes(), None, Mode::Index, dst);
        }
        if let Some(p) = pseudo.path {
            match p {
                "/" => int(dst, 0x80, 7, 4),
                p => self.field(b":path", p.as_bytes(), None, Mode::Index, dst),
            }
        }
        if let Some(p) = pseudo.protocol {
            self.field(b":protocol", p.as_bytes(), None, Mode::Index, dst);
        }
        if let Some(s) = pseudo.status {
            match s.as_u16() {
                200 => int(dst, 0x80, 7, 8),
                204 => int(dst, 0x80, 7, 9),
                206 => int(dst, 0x80, 7, 10),
                304 => int(dst, 0x80, 7, 11),
                400 => int(dst, 0x80, 7, 12),
                404 => int(dst, 0x80, 7, 13),
                500 => int(dst, 0x80, 7, 14),
                _ => self.field(b":status", s.as_str().as_bytes(), None, Mode::Literal, dst),
            }
        }
        for (n, value) in fields {
            let name = n.as_str();
            let mode = if value.is_sensitive() {
                Mode::Never
            } else if per_call(name) {
                Mode::Literal
            } else {
                Mode::Index
            };
            self.field(
                name.as_bytes(),
                value.as_bytes(),
                Some((n, value)),
                mode,
                dst,
            );
        }
    }

    /// `held`: `name` and `value` as `http` types, if they came as such.
    fn field(
        &mut self,
        name: &[u8],
        value: &[u8],
        held: Option<(&HeaderName, &HeaderValue)>,
        mut mode: Mode,
        dst: &mut Vec<u8>,
    ) {
        let (kind, place) = self.cursor;
        self.cursor.1 += 1;
        if mode == Mode::Index {
            let n = self.table.len();
            let first = self.inserted - n;
            let hint = self.hints[kind].get(place).copied().unwrap_or(0);
            let hinted = hint
                .checked_sub(first + 1)
                .filter(|&i| i < n && self.table[i].is(name, value));
            let found = hinted.or_else(|| self.table.iter().rposition(|e| e.is(name, value)));
            if let Some(i) = found {
                if let Some(h) = self.hints[kind].get_mut(place) {
                    *h = first + i + 1;
                }
                int(dst, 0x80, 7, 62 + (n - 1 - i));
                return;
            }
            // An entry larger than half the table would push out the ones
            // that repeat on every call.
            let size = name.len() + value.len() + ENTRY_OVERHEAD;
            if size <= self.max / 2 {
                self.evict(size);
                let mut field = Vec::with_capacity(name.len() + value.len());
                field.extend_from_slice(name);
                field.extend_from_slice(value);
                self.table.push_back(Entry {
                    field: field.into_boxed_slice(),
                    name_len: name.len(),
                    held: held.map(|(n, v)| (n.clone(), v.clone())),
                });
                self.size += size;
                self.inserted += 1;
                if let Some(h) = self.hints[kind].get_mut(place) {
                    *h = self.inserted;
                }
            } else {
                mode = Mode::Literal;
            }
        }
        let (flags, prefix) = match mode {
            Mode::Index => (0x40, 6),
            Mode::Literal => (0x00, 4),
            Mode::Never => (0x10, 4),
        };
        // Looked up only for a literal: most fields are found in the table.
        match static_name(name) {
            Some(i) => int(dst, flags, prefix, i),
            None => {
                dst.push(flags);
                string(dst, name);
            }
        }
        string(dst, value);
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(e) = self.table.pop_front() else {
                break;
            };
            self.size -= e.size();
        }
    }
}

/// Fields that differ from call to call: indexing them would only push out
/// the ones that repeat.
fn per_call(name: &str) -> bool {
    matches!(
        name,
        "grpc-timeout" | "grpc-message" | "grpc-status-details-bin" | "content-length" | "date"
    )
}

/// An integer with a `prefix`-bit prefix, the byte's other bits `flags`
/// (RFC 7541 §5.1).
#[inline]
pub(crate) fn int(dst: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.push(flags | value as u8);
        return;
    }
    dst.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        dst.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
pub(crate) fn string(dst: &mut Vec<u8>, s: &[u8]) {
    int(dst, 0, 7, s.len());
    dst.extend_from_slice(s);
}

/// RFC 7541 Appendix A.
pub(super) const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The static table's first index for a (lower-case) field name
/// (RFC 7541 Appendix A).
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_lookup_agrees_with_the_static_table() {
        // The encoder finds names by `static_name`, the decoder indexes
        // `STATIC`: one table, two directions.
        for (i, (name, _)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(
                static_name(name.as_bytes()),
                Some(first),
                "{name} at {}",
                i + 1
            );
        }
        for other in ["x-role", ":protocol", "Content-Type", ""] {
            assert_eq!(static_name(other.as_bytes()), None, "{other}");
        }
    }
}

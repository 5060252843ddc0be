"""Writes the relay fuzz target's seeds into fuzz/seeds/relay/.

Each input is two big-endian length bytes, the client's frames (after the
preface), then the backend's frames (after its SETTINGS). Run:
    python3 fuzz/seeds/relay.py
    cargo +nightly fuzz run relay fuzz/seeds/relay
"""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay")


def frame(kind, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def lit(name, value):
    """A literal header field without indexing, no Huffman."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def head(sid, path, end=False):
    block = b"\x83\x86" + lit(":path", path) + lit(":authority", "x")
    block += lit("content-type", "application/grpc") + lit("te", "trailers")
    return frame(1, 4 | (1 if end else 0), sid, block)


# The fuzz host forwards paths of length 0 mod 4 to the backend, 1 mod 4 to
# one that fails to dial, 2 mod 4 to one that never answers the dial, and
# answers 3 mod 4 itself.
FWD, FAIL, PEND, ANSWER = "/a.B/CDE", "/a.B/CDEF", "/a.B/C", "/a.B/CD"
MSG = b"\x00\x00\x00\x00\x05hello"
SETTINGS = frame(4, 0, 0, b"")
CLIENT = {
    "one": SETTINGS + head(1, FWD) + frame(0, 1, 1, MSG),
    "four": SETTINGS + head(1, FWD) + head(3, FAIL) + head(5, PEND) + head(7, ANSWER, True)
    + frame(0, 1, 1, MSG) + frame(3, 0, 3, b"\x00\x00\x00\x08"),
    "ping": SETTINGS + frame(6, 0, 0, b"12345678") + frame(8, 0, 0, b"\x00\x01\x00\x00")
    + head(1, FWD) + frame(0, 9, 1, b"\x03" + MSG + b"pad"),
    "goaway": SETTINGS + head(1, FWD) + frame(7, 0, 0, b"\x00\x00\x00\x01\x00\x00\x00\x00"),
}
RESPONSE = frame(1, 4, 1, b"\x88" + lit("content-type", "application/grpc")) + frame(0, 0, 1, MSG) \
    + frame(1, 5, 1, lit("grpc-status", "0"))
BACKEND = {
    "one": RESPONSE,
    "four": RESPONSE + frame(3, 0, 3, b"\x00\x00\x00\x00") + frame(8, 0, 0, b"\x00\x01\x00\x00"),
    "ping": frame(6, 0, 0, b"abcdefgh") + RESPONSE,
    "goaway": frame(7, 0, 0, b"\x00\x00\x00\x00\x00\x00\x00\x00"),
}

os.makedirs(HERE, exist_ok=True)
for name, client in CLIENT.items():
    prefix = struct.pack(">H", len(client)) + client
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(prefix + BACKEND[name])
    with open(os.path.join(HERE, "client-only-" + name), "wb") as f:
        f.write(prefix)

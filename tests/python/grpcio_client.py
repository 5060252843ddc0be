"""A client from another gRPC implementation (grpcio, C-core) against the gateway.

Calls over the Unix socket with mutual TLS, without generated code: request and
reply are hand-encoded protobuf. Prints one line per call and exits 0 only if the
allowed call succeeded and the denied call got PERMISSION_DENIED.
"""
import argparse
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(payload):
    return b"\x0a" + varint(len(payload)) + payload


def decode_payload(data):
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, shift = 0, 0
            while True:
                b = data[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if field == 1:
                return data[i : i + n]
            i += n
        elif wire == 0:
            while data[i] & 0x80:
                i += 1
            i += 1
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(a.ca, "rb").read(),
        private_key=open(a.key, "rb").read(),
        certificate_chain=open(a.cert, "rb").read(),
    )
    # C-core would otherwise send the socket path as :authority (see issue 5).
    opts = [("grpc.ssl_target_name_override", "localhost"), ("grpc.default_authority", "localhost")]
    ok = True
    with grpc.secure_channel("unix:" + a.socket, creds, options=opts) as ch:
        unary = ch.unary_unary("/demo.v1.Echo/Unary")
        reply = unary(encode_request(b"from-python"), timeout=10)
        got = decode_payload(reply)
        print("allowed /demo.v1.Echo/Unary: OK payload=%r" % got)
        ok &= got == b"from-python"
        secret = ch.unary_unary("/demo.v1.Echo/Secret")
        try:
            secret(encode_request(b"x"), timeout=10)
            print("denied /demo.v1.Echo/Secret: unexpectedly OK")
            ok = False
        except grpc.RpcError as e:
            print("denied /demo.v1.Echo/Secret: %s %s" % (e.code().name, e.details()))
            ok &= e.code() == grpc.StatusCode.PERMISSION_DENIED
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

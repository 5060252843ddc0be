"""grpcio (C-core) with its default channel options: no authority override, so
C-core sends the socket path as :authority. Exits 0 if the call succeeds.

    grpcio_defaults.py insecure SOCKET
    grpcio_defaults.py tls SOCKET CA CERT KEY
"""
import sys

import grpc

mode, sock = sys.argv[1], sys.argv[2]
if mode == "insecure":
    ch = grpc.insecure_channel("unix:" + sock)
else:
    ca, cert, key = (open(p, "rb").read() for p in sys.argv[3:6])
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    # Only the TLS name to check is set; :authority stays C-core's default.
    ch = grpc.secure_channel("unix:" + sock, creds, options=[("grpc.ssl_target_name_override", "localhost")])
reply = ch.unary_unary("/demo.v1.Echo/Unary")(b"\x0a\x07default", timeout=10)
assert b"default" in reply, reply
print("OK")

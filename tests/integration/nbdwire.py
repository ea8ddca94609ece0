"""Raw NBD wire helpers for the tests that speak the protocol by hand
(hostile input, TLS downgrades, disconnects mid-request): the handshake's
constants and the few steps every such test repeats.  Kept small and
written from the NBD specification, so that the tests do not share the
server's own encoder.
"""
import struct

NBD_MAGIC = 0x4e42444d41474943   # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054    # "IHAVEOPT"
REP_MAGIC = 0x3e889045565a9      # option reply
REQ_MAGIC = 0x25609513           # transmission request


def recv_exact(s, n):
    """n bytes from s, or EOFError saying how many came before the close."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_greeting(s):
    """The server's newstyle greeting; returns its handshake flags."""
    magic, opt, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    assert magic == NBD_MAGIC and opt == IHAVEOPT, "greeting"
    return hflags


def greet(s, flags=3):
    """Read the greeting and answer with the client flags
    (3: FIXED_NEWSTYLE | NO_ZEROES)."""
    read_greeting(s)
    s.sendall(struct.pack(">I", flags))


def option_bytes(opt, data=b""):
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def option(s, opt, data=b""):
    s.sendall(option_bytes(opt, data))

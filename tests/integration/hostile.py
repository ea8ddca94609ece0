#!/usr/bin/python3
"""Hostile and malformed NBD traffic over raw sockets.

Every case must end in the error the specification prescribes or a
closed connection; the server must stay up, keep serving a well-behaved
client, and leave the volume as it was.
"""
import os
import signal
import socket
import struct
import subprocess
import time

from harness import VOLTRACK, Failures, Server
from nbdwire import IHAVEOPT, REP_MAGIC, REQ_MAGIC, option, read_greeting, recv_exact

t = Failures()
SIZE = 16 << 20


def closed(s, timeout=5.0):
    """True when the peer closes (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def dial(srv, flags=3):
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.sock)
    s.settimeout(10)
    read_greeting(s)
    if flags is not None:
        s.sendall(struct.pack(">I", flags))
    return s


def reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REP_MAGIC, "option reply magic"
    return opt, rtype, recv_exact(s, length)


def final_reply(s):
    """Skip INFO/META_CONTEXT replies; return the ACK or error type."""
    while True:
        opt, rtype, data = reply(s)
        if rtype not in (3, 4, 2):
            return rtype


def go(s, name=b"", structured=False):
    if structured:
        option(s, 8)
        assert final_reply(s) == 1
    option(s, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    return final_reply(s)


def request(s, typ, off, length, flags=0, cookie=1, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, length) + payload)


def simple_reply(s, data_len=0):
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == 0x67446698, f"simple reply magic {magic:#x}"
    return err, cookie, recv_exact(s, data_len) if not err else b""


ERR = 1 << 31
UNSUP, POLICY, INVALID, UNKNOWN, TOO_BIG = ERR | 1, ERR | 2, ERR | 3, ERR | 6, ERR | 9


def witness(srv, what):
    """A well-behaved client still gets correct service."""
    import nbd
    h = srv.connect()
    data = os.urandom(4096)
    h.pwrite(data, SIZE - 4096)
    ok = h.pread(4096, SIZE - 4096) == data
    h.shutdown()
    t.check(ok and srv.alive(), f"other clients unaffected after: {what}")


def negotiation_cases(srv):
    s = dial(srv, flags=None)
    s.sendall(struct.pack(">I", 0x80000003))
    t.check(closed(s), "unknown client flags: connection closed")

    s = dial(srv)
    s.sendall(struct.pack(">QII", 0x1122334455667788, 7, 0))
    t.check(closed(s), "bad option magic: closed")

    # CVE-2017-15119: an option claiming 4 GiB must not be read in full.
    s = dial(srv)
    start = time.time()
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, 0xffffffff))
    t.check(closed(s, 3) and time.time() - start < 3, "4 GiB option length: closed at once")

    s = dial(srv)
    # CVE-2022-26495: INFO with name length -1 inside a 6-byte option.
    option(s, 6, struct.pack(">IH", 0xffffffff, 0))
    t.equal(final_reply(s), INVALID, "INFO with name length -1: ERR_INVALID")
    # CVE-2017-15118: a long name must not overflow anything.
    long_name = b"n" * 5000
    option(s, 6, struct.pack(">I", len(long_name)) + long_name + struct.pack(">H", 0))
    t.equal(final_reply(s), INVALID, "INFO with a 5000-byte name: ERR_INVALID")
    option(s, 6, struct.pack(">I", 300) + b"m" * 300 + struct.pack(">H", 0))
    t.equal(final_reply(s), UNKNOWN, "INFO with a 300-byte unknown name: ERR_UNKNOWN")
    option(s, 6, struct.pack(">I", 1) + b"\0" + struct.pack(">H", 0))
    t.equal(final_reply(s), INVALID, "INFO with a NUL in the name: ERR_INVALID")
    option(s, 6, struct.pack(">IH", 0, 3) + b"\0\1")
    t.equal(final_reply(s), INVALID, "INFO with a lying request count: ERR_INVALID")
    option(s, 0x1234, os.urandom(100))
    t.equal(final_reply(s), UNSUP, "unknown option: ERR_UNSUP")
    option(s, 11)
    t.equal(final_reply(s), UNSUP, "EXTENDED_HEADERS: ERR_UNSUP")
    option(s, 5)
    t.equal(final_reply(s), POLICY, "STARTTLS without --tls-*: ERR_POLICY")
    option(s, 3, b"junk")
    t.equal(final_reply(s), INVALID, "LIST with data: ERR_INVALID")
    option(s, 8, b"x")
    t.equal(final_reply(s), INVALID, "STRUCTURED_REPLY with data: ERR_INVALID")
    meta = struct.pack(">II", 0, 1) + struct.pack(">I", 15) + b"base:allocation"
    option(s, 10, meta)
    t.equal(final_reply(s), INVALID, "SET_META_CONTEXT before structured replies: ERR_INVALID")
    option(s, 8)
    t.equal(final_reply(s), 1, "STRUCTURED_REPLY: ACK")
    option(s, 10, struct.pack(">II", 0, 1) + struct.pack(">I", 0x7fffffff))
    t.equal(final_reply(s), INVALID, "SET_META_CONTEXT with a lying query length: ERR_INVALID")
    option(s, 10, struct.pack(">I", 4) + b"nope" + struct.pack(">I", 0))
    t.equal(final_reply(s), UNKNOWN, "SET_META_CONTEXT on an unknown export: ERR_UNKNOWN")
    many = struct.pack(">II", 0, 200) + (struct.pack(">I", 15) + b"base:allocation") * 200
    option(s, 10, many)
    t.equal(final_reply(s), 1, "the same context asked 200 times is selected once")
    t.equal(go(s), 1, "GO still succeeds after all those errors")
    request(s, 0, 0, 512)
    magic, flags, typ, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    t.check(magic == 0x668e33ef and typ == 1, "structured read reply after hostile negotiation")
    recv_exact(s, length)
    s.close()

    s = dial(srv)
    option(s, 1, b"no-such-export")
    t.check(closed(s), "EXPORT_NAME with an unknown name: closed (no error path)")

    # CVE-2013-7441 / 2017-7539: vanish at every point of negotiation.
    for cut in range(0, 30, 3):
        s = dial(srv)
        payload = struct.pack(">QII", IHAVEOPT, 7, 10) + struct.pack(">IIH", 0, 0, 0)
        s.sendall(payload[:cut])
        s.close()
    witness(srv, "clients vanishing mid-negotiation")


def transmission_cases(srv, before):
    s = dial(srv)
    t.equal(go(s), 1, "GO (simple replies)")
    request(s, 99, 0, 0, cookie=7)
    err, cookie, _ = simple_reply(s)
    t.check(err == 22 and cookie == 7, "unknown command: EINVAL, same cookie")
    request(s, 0, 0, 512, flags=1 << 12, cookie=8)
    t.equal(simple_reply(s)[0], 22, "unknown command flag: EINVAL")
    # an oversized WRITE: the payload is read and dropped, the stream stays in step
    big = 33 << 20
    request(s, 1, 0, big, cookie=9, payload=b"\xee" * big)
    t.equal(simple_reply(s)[0], 22, "33 MiB WRITE: EINVAL")
    request(s, 1, SIZE - 100, 512, cookie=10, payload=b"\xee" * 512)
    t.equal(simple_reply(s)[0], 28, "WRITE past the end: ENOSPC")
    request(s, 0, 0, 4096, cookie=11)
    err, cookie, data = simple_reply(s, 4096)
    t.check(err == 0 and cookie == 11 and data == before[:4096],
            "the stream is still in step after those")
    request(s, 7, 0, 512, cookie=12)
    t.equal(simple_reply(s)[0], 22, "BLOCK_STATUS without contexts: EINVAL")
    # a request with a bad magic cannot be resynchronised: closed
    s.sendall(b"\xde\xad\xbe\xef" + bytes(24))
    t.check(closed(s), "bad request magic: closed")

    # a WRITE cut short, then the client is gone: nothing of it lands
    s = dial(srv)
    go(s)
    request(s, 1, 4096, 65536, cookie=1, payload=b"\xab" * 1000)
    s.close()
    time.sleep(0.2)
    t.equal(srv.read_volume(4096, 65536), before[4096:4096 + 65536],
            "a WRITE cut short changes nothing")

    # pipelined garbage after DISC is ignored, the connection closes
    s = dial(srv)
    go(s)
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 2, 1, 0, 0) + os.urandom(1000))
    t.check(closed(s), "DISC closes the connection")
    witness(srv, "transmission-phase abuse")


def vm_size_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


def block_status_budget():
    """Pipelined BLOCK_STATUS with 64 contexts: each reply needs room for
    16384 descriptors per context (8 MiB); 128 unread ones must stay
    within the connection's in-flight budget, not take a gigabyte."""
    srv = Server(size=SIZE)
    try:
        for i in range(64):
            subprocess.run([VOLTRACK, "checkpoint", srv.volume, f"c{i}"], check=True,
                           stdout=subprocess.DEVNULL)
        srv.start()
        h = srv.connect()
        for b in range(0, SIZE, 128 << 10):  # every other 64 KiB block: many extents
            h.pwrite(b"\x01" * 4096, b)
        h.shutdown()
        s = dial(srv)
        option(s, 8)
        t.equal(final_reply(s), 1, "structured replies")
        names = [f"qemu:dirty-bitmap:c{i}".encode() for i in range(64)]
        option(s, 10, struct.pack(">II", 0, len(names)) +
               b"".join(struct.pack(">I", len(n)) + n for n in names))
        ids = 0
        while True:
            _, rtype, _ = reply(s)
            if rtype != 4:
                break
            ids += 1
        t.equal(ids, 64, "64 dirty-bitmap contexts selected (premise)")
        option(s, 7, struct.pack(">IH", 0, 0))
        t.equal(final_reply(s), 1, "GO")
        base = vm_size_kib(srv.proc.pid)
        s.sendall(b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, 7, i, 0, SIZE)
                           for i in range(128)))
        time.sleep(1)  # let the server take what it will; a slow one takes less
        grown = (vm_size_kib(srv.proc.pid) - base) >> 10
        t.check(grown < 256, f"128 unread BLOCK_STATUS replies cost {grown} MiB, not a gigabyte")
        answered, chunks, odd = set(), 0, 0
        while len(answered) < 128:
            magic, flags, typ, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
            recv_exact(s, length)
            odd += magic != 0x668e33ef or typ != 5
            chunks += 1
            if flags & 1:
                answered.add(cookie)
        t.check(odd == 0 and chunks == 128 * 64,
                f"every request answered, one block-status chunk per context ({chunks}, {odd} odd)")
        s.close()
        witness(srv, "pipelined block status with 64 contexts")
    finally:
        srv.cleanup()


def stall_cases():
    # Handshake timeout and connection cap (CVE-2024-7409).
    srv = Server(size=SIZE, extra=["--handshake-timeout", "1", "--max-connections", "4"]).start()
    try:
        stalled = [dial(srv, flags=None) for _ in range(4)]
        extra = socket.socket(socket.AF_UNIX)
        extra.connect(srv.sock)
        t.check(closed(extra, 3), "a connection over the cap is refused")
        start = time.time()
        t.check(all(closed(s, 5) for s in stalled), "stalled handshakes time out")
        t.check(time.time() - start < 4, "...within the handshake timeout")

        # trickling one byte at a time does not extend the deadline
        s = dial(srv, flags=None)
        start = time.time()
        try:
            for b in struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 3, 0)[:10]:
                s.sendall(bytes([b]))
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        t.check(closed(s, 5) and time.time() - start < 4, "a trickling client is cut off")
        witness(srv, "stalled and trickling clients")

        # stop while clients sit in negotiation: exits promptly and cleanly
        hung = [dial(srv, flags=None) for _ in range(3)]
        start = time.time()
        t.equal(srv.stop(), 0, "SIGTERM with stalled negotiations: exit 0")
        t.check(time.time() - start < 3, "...promptly")
        for s in hung:
            s.close()
    finally:
        srv.cleanup()


srv = Server(size=SIZE).start()
try:
    before = srv.read_volume()
    negotiation_cases(srv)
    # the witness writes only the last 4 KiB
    t.equal(srv.read_volume(0, SIZE - 4096), before[:SIZE - 4096],
            "negotiation abuse changed nothing in the volume")
    transmission_cases(srv, before)
    t.equal(srv.read_volume(0, SIZE - 4096), before[:SIZE - 4096],
            "transmission abuse changed nothing in the volume")
    t.equal(srv.stop(), 0, "server exits 0")
    t.check("runtime error" not in srv.log_text() and "Sanitizer" not in srv.log_text(),
            "no sanitizer reports")
finally:
    srv.cleanup()
block_status_budget()
stall_cases()
t.finish()

#!/usr/bin/python3
"""TLS on the NBD server: set-up, data through real clients, refusals.

Credentials are made here with certtool and psktool.  Each server
(X.509, X.509 with --tls-verify-peer, PSK) is driven by nbdinfo,
nbdcopy and qemu-img over nbds+unix:// and nbds:// (TCP), and the data
written through TLS is checked against a reference this test keeps and
against the backing file read directly.  Each refusal (plaintext
clients, a wrong key, a wrong user, a certificate from a second CA, no
certificate where one is required, a client that stalls in the TLS
handshake) is followed by a client that must still be served.

A raw client plays the man in the middle: options sent before STARTTLS
get ERR_TLS_REQD each and leave nothing behind (after STARTTLS and GO,
replies are simple and no context is selected); EXPORT_NAME before
STARTTLS closes; plaintext sent behind STARTTLS is never taken for an
option; a second STARTTLS is ERR_INVALID.
"""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

from harness import VOLTRACK, Failures, Server
from nbdwire import IHAVEOPT, REP_MAGIC, greet, option, recv_exact

t = Failures()
SIZE = 8 << 20
ERR = 1 << 31
ACK, INFO = 1, 3
POLICY, INVALID, TLS_REQD = ERR | 2, ERR | 3, ERR | 5
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
FLAG_SEND_DF = 1 << 7
CLIENT_TIMEOUT = 120

for tool in ("certtool", "psktool", "nbdinfo", "nbdcopy", "qemu-img"):
    if not shutil.which(tool):
        print(f"SKIP: {tool} is not installed (scripts/deps.sh)")
        sys.exit(77)

work = tempfile.mkdtemp(prefix="voltrack-tls-")


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, timeout=CLIENT_TIMEOUT, **kw)


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


# ---- credentials ----

def ca(name):
    d = os.path.join(work, name)
    os.mkdir(d)
    write(f"{d}/ca.info", f"cn = {name}\nca\ncert_signing_key\nexpiration_days = 2\n")
    run("certtool", "--generate-privkey", "--outfile", f"{d}/ca-key.pem").check_returncode()
    run("certtool", "--generate-self-signed", "--load-privkey", f"{d}/ca-key.pem",
        "--template", f"{d}/ca.info", "--outfile", f"{d}/ca-cert.pem").check_returncode()
    return d


def issue(ca_dir, out_dir, role):
    """A certificate for role ('server' or 'client') in the layout qemu-nbd,
    nbdkit and libnbd read: ca-cert.pem, ROLE-cert.pem, ROLE-key.pem."""
    os.makedirs(out_dir, exist_ok=True)
    usage = "tls_www_server" if role == "server" else "tls_www_client"
    write(f"{out_dir}/{role}.info",
          f"cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n{usage}\n"
          "encryption_key\nsigning_key\nexpiration_days = 2\n")
    key, cert = f"{out_dir}/{role}-key.pem", f"{out_dir}/{role}-cert.pem"
    run("certtool", "--generate-privkey", "--outfile", key).check_returncode()
    os.chmod(key, 0o600)
    run("certtool", "--generate-certificate", "--load-ca-certificate", f"{ca_dir}/ca-cert.pem",
        "--load-ca-privkey", f"{ca_dir}/ca-key.pem", "--load-privkey", key,
        "--template", f"{out_dir}/{role}.info", "--outfile", cert).check_returncode()
    shutil.copy(f"{ca_dir}/ca-cert.pem", f"{out_dir}/ca-cert.pem")
    return out_dir


ca1, ca2 = ca("ca1"), ca("ca2")
server_pki = issue(ca1, f"{work}/server", "server")
client_pki = issue(ca1, f"{work}/client", "client")       # trusted client
rogue_pki = issue(ca2, f"{work}/rogue", "client")         # signed by the second CA
shutil.copy(f"{ca1}/ca-cert.pem", f"{rogue_pki}/ca-cert.pem")  # it trusts the server
anon_pki = f"{work}/anon"                                  # trusts the server, no cert
os.mkdir(anon_pki)
shutil.copy(f"{ca1}/ca-cert.pem", anon_pki)
wrong_ca = f"{work}/wrongca"                               # trusts only the second CA
os.mkdir(wrong_ca)
shutil.copy(f"{ca2}/ca-cert.pem", wrong_ca)

psk_dir = f"{work}/psk"
os.mkdir(psk_dir)
run("psktool", "-u", "alice", "-p", f"{psk_dir}/keys.psk").check_returncode()
run("psktool", "-u", "alice", "-p", f"{work}/wrong-key.psk").check_returncode()
run("psktool", "-u", "mallory", "-p", f"{work}/wrong-user.psk").check_returncode()
t.check(open(f"{psk_dir}/keys.psk").read() != open(f"{work}/wrong-key.psk").read(),
        "premise: the wrong key differs")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def unix_uri(srv, query=""):
    return f"nbds+unix:///?socket={srv.sock}" + (f"&{query}" if query else "")


def serves(srv, uri, what):
    r = run("nbdinfo", "--size", uri)
    return t.check(r.returncode == 0 and int(r.stdout) == SIZE,
                   f"{what}: served ({r.stderr.decode().strip()})")


def refused(srv, args, what):
    r = run(*args)
    t.check(r.returncode != 0, f"{what}: refused")
    t.check(srv.alive(), f"{what}: the server survived")


# ---- raw client ----

def replies(s, opt):
    """Option replies up to the final one: [(type, data)]."""
    out = []
    while True:
        magic, echo, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        assert magic == REP_MAGIC and echo == opt, f"reply framing {magic:#x} {echo}"
        out.append((rtype, recv_exact(s, length)))
        if rtype not in (2, 3, 4):
            return out


def final(s, opt, data=b""):
    option(s, opt, data)
    return replies(s, opt)[-1][0]


def meta_request(*queries):
    q = b"".join(struct.pack(">I", len(x)) + x for x in queries)
    return struct.pack(">I", 0) + struct.pack(">I", len(queries)) + q


GO_DATA = struct.pack(">IH", 0, 0)


def tls_wrap(s, pki=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{server_pki}/ca-cert.pem")
    if pki:
        ctx.load_cert_chain(f"{pki}/client-cert.pem", f"{pki}/client-key.pem")
    w = ctx.wrap_socket(s, server_hostname="localhost")
    return w


def raw(srv):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(srv.sock)
    greet(s)
    return s


def read_to_end(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (ConnectionError, ssl.SSLError, OSError):
        return data


def downgrade(srv, ref):
    # Everything before STARTTLS is refused and forgotten.
    s = raw(srv)
    t.equal(final(s, OPT_STRUCTURED), TLS_REQD, "STRUCTURED_REPLY before STARTTLS")
    t.equal(final(s, OPT_SET_META, meta_request(b"base:allocation")), TLS_REQD,
            "SET_META_CONTEXT before STARTTLS")
    t.equal(final(s, OPT_LIST_META, meta_request()), TLS_REQD, "LIST_META_CONTEXT before STARTTLS")
    t.equal(final(s, OPT_LIST), TLS_REQD, "LIST before STARTTLS")
    t.equal(final(s, OPT_INFO, GO_DATA), TLS_REQD, "INFO before STARTTLS")
    t.equal(final(s, OPT_GO, GO_DATA), TLS_REQD, "GO before STARTTLS")
    t.equal(final(s, 11), TLS_REQD, "EXTENDED_HEADERS before STARTTLS")
    t.equal(final(s, 0x4242, b"junk"), TLS_REQD, "an unknown option before STARTTLS")
    t.equal(final(s, OPT_STARTTLS, b"x"), INVALID, "STARTTLS with data")
    t.equal(final(s, OPT_STARTTLS), ACK, "STARTTLS")
    s = tls_wrap(s)
    t.check(s.version() in ("TLSv1.2", "TLSv1.3"), f"TLS 1.2 or later ({s.version()})")
    t.equal(final(s, OPT_STARTTLS), INVALID, "a second STARTTLS")
    option(s, OPT_GO, GO_DATA)
    got = replies(s, OPT_GO)
    t.equal(got[-1][0], ACK, "GO over TLS")
    export = [d for typ, d in got if typ == INFO and d[:2] == b"\0\0"]
    size, eflags = struct.unpack(">QH", export[0][2:12])
    t.equal(size, SIZE, "export size over TLS")
    t.check(not eflags & FLAG_SEND_DF, "no structured replies carried over (no SEND_DF)")
    # A READ gets a simple reply, as without structured replies.
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 4096, 4096))
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    t.equal(magic, 0x67446698, "READ after the downgrade attempt: a simple reply")
    t.check(err == 0 and cookie == 7 and recv_exact(s, 4096) == ref[4096:8192],
            "READ over the raw TLS client returns the reference")
    # No context was selected: BLOCK_STATUS is refused.
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 8, 0, 4096))
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    t.check(magic == 0x67446698 and err == 22 and cookie == 8,
            f"BLOCK_STATUS without a context carried over: EINVAL ({err})")
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 9, 0, 0))  # DISC
    try:
        # b"" only after a close_notify: a bare close raises SSLEOFError.
        t.equal(s.recv(100), b"", "soft disconnect: the server ends the TLS session")
    except ssl.SSLError as e:
        t.check(False, f"soft disconnect: the server ends the TLS session ({e})")
    s.close()

    # EXPORT_NAME before STARTTLS cannot be refused: the server closes.
    s = raw(srv)
    option(s, OPT_EXPORT_NAME, b"")
    t.equal(read_to_end(s), b"", "EXPORT_NAME before STARTTLS: closed, nothing said")
    s.close()

    # Plaintext behind STARTTLS is fed to the TLS handshake, never
    # parsed as an option (STARTTLS command injection).
    mark = len(open(srv.log_path, "rb").read())
    s = raw(srv)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) +
              struct.pack(">QII", IHAVEOPT, OPT_GO, len(GO_DATA)) + GO_DATA)
    t.equal(replies(s, OPT_STARTTLS)[-1][0], ACK, "STARTTLS with a GO behind it: ACK")
    rest = read_to_end(s)
    t.check(struct.pack(">Q", REP_MAGIC) not in rest,
            f"the injected GO got no option reply ({rest[:16].hex()})")
    s.close()
    t.check(b"TLS handshake failed" in open(srv.log_path, "rb").read()[mark:],
            "the injected GO went to the TLS handshake, which refused it")

    # ABORT is allowed before STARTTLS.
    s = raw(srv)
    t.equal(final(s, OPT_ABORT), ACK, "ABORT before STARTTLS")
    s.close()
    t.check(srv.alive(), "the server survived the raw clients")


def tls_refused(srv, pki, what):
    s = raw(srv)
    t.equal(final(s, OPT_STARTTLS), ACK, f"{what}: STARTTLS")
    try:
        w = tls_wrap(s, pki)
        # TLS 1.3 reports a refused client certificate on the first read.
        option(w, OPT_GO, GO_DATA)
        replies(w, OPT_GO)
        t.check(False, f"{what}: refused")
    except (ssl.SSLError, ConnectionError, EOFError, OSError):
        t.check(True, f"{what}: refused")
    s.close()


def qemu_obj_x509(pki):
    return ["--object", f"tls-creds-x509,id=tls0,dir={pki},endpoint=client"]


def qemu_target(srv, host=None):
    if host:
        return f"driver=nbd,server.type=inet,server.host={host[0]},server.port={host[1]},tls-creds=tls0"
    return f"driver=nbd,server.type=unix,server.path={srv.sock},tls-creds=tls0,tls-hostname=localhost"


def qemu_write(srv, obj, src, what, host=None):
    r = run("qemu-img", "convert", "-n", "-f", "raw", *obj, "--target-image-opts",
            src, qemu_target(srv, host))
    t.check(os.path.exists(src), f"premise: {src} exists")
    t.check(r.returncode == 0, f"{what}: qemu-img wrote through TLS ({r.stderr.decode().strip()})")


def qemu_compare(srv, obj, ref_path, what, host=None):
    r = run("qemu-img", "compare", *obj, "--image-opts",
            f"driver=raw,file.filename={ref_path}", qemu_target(srv, host))
    t.check(r.returncode == 0, f"{what}: qemu-img reads back the reference "
            f"({(r.stdout + r.stderr).decode().strip()})")


def x509_server():
    port = free_port()
    srv = Server(size=SIZE, extra=["--tls-creds", server_pki, "--listen", f"127.0.0.1:{port}"])
    srv.start()
    tcp = f"nbds://localhost:{port}/?tls-certificates={anon_pki}"
    ucert = unix_uri(srv, f"tls-certificates={anon_pki}")
    try:
        t.check(b"TLS required (x509)" in open(srv.log_path, "rb").read(), "the log says TLS")
        # Premise: the socket really speaks TLS only.
        refused(srv, ["nbdinfo", "--size", srv.uri], "plaintext nbdinfo over Unix")
        refused(srv, ["nbdinfo", "--size", f"nbd://127.0.0.1:{port}/"], "plaintext nbdinfo over TCP")
        # (libnbd checks the server's certificate only where it has a
        # host name to check it against: over TCP.)
        refused(srv, ["nbdinfo", "--size", f"nbds://localhost:{port}/?tls-certificates={wrong_ca}"],
                "a client that does not trust the server's CA")
        serves(srv, ucert, "nbdinfo over nbds+unix")
        serves(srv, tcp, "nbdinfo over nbds://")

        # Data: nbdcopy writes over Unix, reads back over TCP.
        ref = bytearray(os.urandom(SIZE))
        ref_path = f"{work}/ref.bin"
        open(ref_path, "wb").write(ref)
        r = run("nbdcopy", ref_path, ucert)
        t.check(r.returncode == 0, f"nbdcopy wrote through TLS ({r.stderr.decode().strip()})")
        back = f"{work}/back.bin"
        r = run("nbdcopy", "--request-size=4096", tcp, back)
        t.check(r.returncode == 0 and open(back, "rb").read() == ref,
                "nbdcopy over nbds:// reads back what was written")
        t.check(srv.read_volume() == ref, "the backing file holds what nbdcopy wrote")

        # qemu-img writes a second pattern into the first MiB over TCP.
        part = os.urandom(1 << 20)
        open(f"{work}/part.bin", "wb").write(part)
        ref[:len(part)] = part
        open(ref_path, "wb").write(ref)
        obj = qemu_obj_x509(anon_pki)
        qemu_write(srv, obj, f"{work}/part.bin", "x509/TCP",
                   host=("127.0.0.1", port))
        t.check(srv.read_volume(0, len(part)) == part, "the backing file holds qemu-img's write")
        qemu_compare(srv, obj, ref_path, "x509/Unix")

        downgrade(srv, bytes(ref))
        serves(srv, ucert, "after the raw clients")
    finally:
        t.equal(srv.stop(), 0, "x509 server: clean exit")
        srv.cleanup()


def verify_peer_server():
    srv = Server(size=SIZE, extra=["--tls-creds", server_pki, "--tls-verify-peer"])
    srv.start()
    try:
        refused(srv, ["nbdinfo", "--size", unix_uri(srv, f"tls-certificates={anon_pki}")],
                "verify-peer: a client without a certificate")
        refused(srv, ["nbdinfo", "--size", unix_uri(srv, f"tls-certificates={rogue_pki}")],
                "verify-peer: a certificate from a second CA")
        tls_refused(srv, None, "verify-peer: raw client without a certificate")
        tls_refused(srv, rogue_pki, "verify-peer: raw client with the second CA's certificate")
        good = unix_uri(srv, f"tls-certificates={client_pki}")
        serves(srv, good, "verify-peer: the CA's client")
        ref = os.urandom(SIZE)
        open(f"{work}/vp.bin", "wb").write(ref)
        r = run("nbdcopy", f"{work}/vp.bin", good)
        t.check(r.returncode == 0 and srv.read_volume() == ref,
                "verify-peer: nbdcopy's write reached the volume")
        qemu_compare(srv, qemu_obj_x509(client_pki), f"{work}/vp.bin", "verify-peer")
        log = open(srv.log_path, "rb").read()
        t.check(b"no certificate" in log or b"certificate refused" in log,
                "the log says why a client was refused")
    finally:
        t.equal(srv.stop(), 0, "verify-peer server: clean exit")
        srv.cleanup()


def psk_server():
    srv = Server(size=SIZE, extra=["--tls-psk", f"{psk_dir}/keys.psk", "--handshake-timeout", "3"])
    srv.start()
    good = unix_uri(srv, f"tls-psk-file={psk_dir}/keys.psk").replace("///", "//alice@/")
    try:
        refused(srv, ["nbdinfo", "--size", srv.uri], "psk: plaintext nbdinfo")
        refused(srv, ["nbdinfo", "--size",
                      unix_uri(srv, f"tls-psk-file={work}/wrong-key.psk").replace("///", "//alice@/")],
                "psk: a wrong key")
        refused(srv, ["nbdinfo", "--size",
                      unix_uri(srv, f"tls-psk-file={work}/wrong-user.psk").replace("///", "//mallory@/")],
                "psk: an unknown user")
        serves(srv, good, "psk: the right key")
        ref = os.urandom(SIZE)
        open(f"{work}/psk.bin", "wb").write(ref)
        r = run("nbdcopy", f"{work}/psk.bin", good)
        t.check(r.returncode == 0 and srv.read_volume() == ref, "psk: nbdcopy's write reached the volume")
        obj = ["--object", f"tls-creds-psk,id=tls0,dir={psk_dir},username=alice,endpoint=client"]
        qemu_compare(srv, obj, f"{work}/psk.bin", "psk")
        part = os.urandom(1 << 20)
        open(f"{work}/ppart.bin", "wb").write(part)
        qemu_write(srv, obj, f"{work}/ppart.bin", "psk")
        t.check(srv.read_volume(0, len(part)) == part, "psk: the backing file holds qemu-img's write")

        # A client that stalls inside the TLS handshake is cut off by
        # the negotiation deadline, and nobody else waits for it.
        s = raw(srv)
        t.equal(final(s, OPT_STARTTLS), ACK, "stalling client: STARTTLS")
        s.settimeout(60)
        t0 = time.monotonic()
        gone = read_to_end(s) == b""
        t.check(gone, "stalling client: closed by the server")
        serves(srv, good, "psk: while and after a client stalled")
        t.check(time.monotonic() - t0 < 55, "stalling client: cut off by the deadline")
        s.close()
    finally:
        t.equal(srv.stop(), 0, "psk server: clean exit")
        srv.cleanup()


def startup_errors():
    srv = Server(size=SIZE)
    bad_psk = f"{work}/bad.psk"
    write(bad_psk, "alice:nothex\n")
    garbage = f"{work}/garbage"
    os.mkdir(garbage)
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        write(f"{garbage}/{name}", "not a PEM file\n")
    nokey = f"{work}/nokey"
    os.mkdir(nokey)
    for name in ("ca-cert.pem", "server-cert.pem"):
        shutil.copy(f"{server_pki}/{name}", nokey)
    cases = [
        (["--tls-creds", f"{work}/nowhere"], "ca-cert.pem"),
        (["--tls-creds", nokey], "server-key.pem"),
        (["--tls-creds", garbage], "ca-cert.pem"),
        (["--tls-psk", f"{work}/nowhere.psk"], "nowhere.psk"),
        (["--tls-psk", bad_psk], "not hexadecimal"),
        (["--tls-psk", f"{psk_dir}/keys.psk", "--tls-creds", server_pki], "exclude"),
        (["--tls-verify-peer"], "--tls-creds"),
    ]
    try:
        for extra, words in cases:
            r = run(VOLTRACK, "serve", srv.volume, *extra)
            err = r.stderr.decode().strip()
            t.check(r.returncode != 0 and words in err and len(err.splitlines()) <= 2,
                    f"serve {' '.join(extra)}: one clear line naming {words!r} ({err})")
            t.check(not os.path.exists(srv.sock), f"serve {' '.join(extra)}: never listened")
    finally:
        srv.cleanup()


try:
    startup_errors()
    x509_server()
    verify_peer_server()
    psk_server()
finally:
    shutil.rmtree(work, ignore_errors=True)
t.finish()

#!/usr/bin/python3
"""Local safety of the listeners.

- The control socket and the NBD sockets are created 0600, whatever
  the umask.
- The control socket serves only root and the owner of the metadata
  directory (SO_PEERCRED), even when the modes would let others in.
- Export and checkpoint names never become paths.
- --listen binds only the address it is given; without it the server
  has no TCP socket at all.
- A client that vanishes mid-reply (NBD over Unix and TCP, and the
  control socket) never takes the server down.

Needs root to connect as other users; exits 77 (skipped) without it.
"""
import os
import socket
import struct
import subprocess
import sys
import time

from harness import VOLTRACK, Failures, Server
from nbdwire import REQ_MAGIC, greet, option, recv_exact

t = Failures()
SIZE = 16 << 20
NOBODY = 65534
STRANGER = 4242


def final_reply(s):
    while True:
        _, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if rtype not in (2, 3, 4):
            return rtype


def go(s, name=b""):
    option(s, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    return final_reply(s)


def unix_client(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    greet(s)
    return s


def tree(root):
    """Every path under root but the server's log: what names could create."""
    out = set()
    for d, dirs, files in os.walk(root):
        for f in dirs + files:
            p = os.path.join(d, f)
            if not p.endswith("serve.log"):
                out.add(p)
    return out


def cli(*args):
    r = subprocess.run([VOLTRACK] + list(args), capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def ctl_as(uid, path, request):
    """Talk to the control socket as another user, in a child process."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
            "try:\n s.connect(sys.argv[1])\n"
            "except OSError as e:\n sys.stdout.write('connect: %s' % e.strerror); sys.exit(0)\n"
            "try:\n s.sendall(sys.argv[2].encode().replace(b',', b'\\0')); s.shutdown(socket.SHUT_WR)\n"
            "except OSError:\n pass  # refused before the request was read\n"
            "out=b''\nwhile True:\n b=s.recv(65536)\n if not b: break\n out+=b\n"
            "sys.stdout.write(out.decode(errors='replace'))\n")

    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    r = subprocess.run([sys.executable, "-c", code, path, request], capture_output=True,
                       text=True, preexec_fn=drop, timeout=30)
    return r.stdout or r.stderr


def socket_modes():
    old = os.umask(0)  # the server must not depend on a sane umask
    try:
        srv = Server(size=SIZE).start()
    finally:
        os.umask(old)
    try:
        for name in ("control.sock", "nbd.sock"):
            mode = os.stat(os.path.join(srv.meta, name)).st_mode & 0o777
            t.equal(oct(mode), oct(0o600), f"{name} mode under umask 0")
        t.equal(oct(os.stat(srv.meta).st_mode & 0o777), oct(0o700), "metadata directory mode")
    finally:
        srv.cleanup()

    other = Server(size=SIZE)
    path = os.path.join(other.dir, "elsewhere.sock")
    other.extra = ["--socket", path]
    old = os.umask(0)
    try:
        other.start()
    finally:
        os.umask(old)
    try:
        t.equal(oct(os.stat(path).st_mode & 0o777), oct(0o600), "--socket PATH mode under umask 0")
    finally:
        other.cleanup()


def control_peers():
    srv = Server(size=SIZE).start()
    ctl = os.path.join(srv.meta, "control.sock")
    try:
        rc, out = cli("checkpoint", srv.volume, "mine")
        t.check(rc == 0, f"root uses the control socket (premise): {out}")
        # Open every door the file system has, so that only the peer
        # check stands between other users and the socket.
        os.chmod(srv.dir, 0o755)
        os.chmod(srv.meta, 0o777)
        os.chmod(ctl, 0o666)
        out = ctl_as(NOBODY, ctl, "checkpoint,intruder,")
        t.check(out.startswith("1") and "owner" in out, f"nobody refused: {out!r}")
        out = ctl_as(STRANGER, ctl, "list,")
        t.check(out.startswith("1") and "mine" not in out, f"uid {STRANGER} refused: {out!r}")
        rc, out = cli("list", srv.volume)
        t.check(rc == 0 and "mine" in out and "intruder" not in out,
                f"a refused request changed nothing: {out}")
        t.check("refused a client (uid 65534)" in srv.log_text(), "the refusal is logged")

        os.chown(srv.meta, NOBODY, NOBODY)
        out = ctl_as(NOBODY, ctl, "list,")
        t.check(out.startswith("0") and "mine" in out,
                f"the owner of the metadata directory is served: {out!r}")
        out = ctl_as(STRANGER, ctl, "list,")
        t.check(out.startswith("1"), f"uid {STRANGER} still refused: {out!r}")
        rc, out = cli("list", srv.volume)
        t.check(rc == 0 and "mine" in out, f"root is still served: {out}")
        os.chown(srv.meta, 0, 0)
    finally:
        srv.cleanup()


def names_never_paths():
    srv = Server(size=SIZE).start()
    try:
        before = tree(srv.dir)
        hostile = [b"../x", b"..", b"/etc/passwd", b"snapshot/../../x", b"snapshot/",
                   b"./", b"a/b", b"disk.img", b"../disk.img", b"nbd.sock", b"%2e%2e/x"]
        s = unix_client(srv.sock)
        for name in hostile:
            option(s, 6, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
            t.equal(final_reply(s), (1 << 31) | 6, f"INFO {name!r}: ERR_UNKNOWN")
        option(s, 3)
        names = []
        while True:
            _, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
            data = recv_exact(s, length)
            if rtype != 2:
                break
            names.append(data[4:])
        t.equal(names, [b""], "LIST offers only the live volume")
        s.close()
        for name in (b"../x", b"/etc/passwd"):
            s = unix_client(srv.sock)
            option(s, 1, name)  # EXPORT_NAME has no error reply: closed
            s.settimeout(5)
            t.check(s.recv(1) == b"", f"EXPORT_NAME {name!r}: closed")
            s.close()
        for name in ("../x", "a/b", "/abs", "..", "x\ny"):
            rc, out = cli("checkpoint", srv.volume, name)
            t.check(rc != 0, f"checkpoint name {name!r} refused: {out.strip()}")
        t.equal(tree(srv.dir), before, "no file was created or touched by any name")
        s = unix_client(srv.sock)
        t.equal(go(s), 1, "the live export still answers GO")
        s.close()
        t.check(srv.alive(), "server alive after hostile names")
    finally:
        srv.cleanup()


def listening_inodes(pid):
    """(address, port) of every TCP socket of pid in LISTEN state."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:
                    continue
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                if family == socket.AF_INET:
                    raw = raw[::-1]
                else:
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listen_only_given():
    srv = Server(size=SIZE).start()
    try:
        t.equal(listening_inodes(srv.proc.pid), set(), "no --listen: no TCP socket at all")
    finally:
        srv.cleanup()

    port = free_port()
    srv = Server(size=SIZE, extra=["--listen", f"127.0.0.1:{port}"]).start()
    try:
        t.equal(listening_inodes(srv.proc.pid), {("127.0.0.1", port)},
                "--listen 127.0.0.1:PORT listens there and nowhere else")
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        greet(s)
        t.equal(go(s), 1, "TCP client on the given address negotiates")
        s.close()
        try:
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
            t.check(False, "another loopback address must be refused")
        except ConnectionRefusedError:
            t.check(True, "another loopback address is refused")
    finally:
        srv.cleanup()


def vanish_mid_reply(connect, what, srv):
    s = connect()
    t.equal(go(s), 1, f"{what}: negotiated (premise)")
    reqs = b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, i, (i % 16) << 20, 1 << 20)
                    for i in range(64))
    s.sendall(reqs)  # 64 MiB of replies: far more than any socket buffer
    first = recv_exact(s, 16)
    t.check(first[:4] == b"\x67\x44\x66\x98", f"{what}: the server began replying (premise)")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # gone, with the replies half sent
    time.sleep(0.5)
    t.check(srv.alive(), f"{what}: server alive after the client vanished mid-reply")
    s = connect()
    t.equal(go(s), 1, f"{what}: the next client is served")
    s.close()


def no_sigpipe():
    port = free_port()
    srv = Server(size=SIZE, extra=["--listen", f"127.0.0.1:{port}"]).start()
    try:
        def tcp():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            greet(s)
            return s
        for _ in range(3):
            vanish_mid_reply(lambda: unix_client(srv.sock), "unix", srv)
            vanish_mid_reply(tcp, "tcp", srv)
        ctl = os.path.join(srv.meta, "control.sock")
        for _ in range(20):
            c = socket.socket(socket.AF_UNIX)
            c.connect(ctl)
            c.sendall(b"status\0--json\0")
            c.shutdown(socket.SHUT_WR)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # before the answer
        rc, out = cli("status", srv.volume)
        t.check(rc == 0 and srv.alive(), f"control socket: clients that vanish are harmless: {out}")
        t.equal(srv.stop(), 0, "clean stop after vanishing clients")
    finally:
        srv.cleanup()


if os.geteuid() != 0:
    print("needs root to connect as other users; security test not run")
    sys.exit(77)
socket_modes()
control_peers()
names_never_paths()
listen_only_given()
no_sigpipe()
t.finish()

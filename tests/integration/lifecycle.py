#!/usr/bin/python3
"""The command line: init and serve, their refusals, locks and signals.

The superblock is checked byte by byte against the layout documented in
doc/format.md, not through voltrack's own decoder.
"""
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

from harness import VOLTRACK, Failures, Server

t = Failures()
W = tempfile.mkdtemp(prefix="voltrack-life-")


def run(*args):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def superblock(vol):
    return open(vol + ".voltrack/superblock", "rb").read()


def crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82f63b78 if crc & 1 else crc >> 1
    return crc ^ 0xffffffff


def test_init():
    vol = os.path.join(W, "a.img")
    rc, out = run("init", vol)
    t.check(rc != 0 and "--size" in out, f"init of a missing file without --size refuses: {out}")
    rc, out = run("init", vol, "--size", "3G", "--granularity", "128K")
    t.equal(rc, 0, f"init --size creates the volume: {out}")
    st = os.stat(vol)
    t.equal(st.st_size, 3 << 30, "volume has the requested size")
    t.check(st.st_blocks * 512 < (1 << 20), "volume is sparse")

    sb = superblock(vol)
    t.equal(len(sb), 4096, "superblock is 4096 bytes")
    t.equal(sb[0:8], b"VTRKSUPR", "superblock magic")
    version, hlen, crc = struct.unpack_from("<III", sb, 8)
    t.equal((version, hlen), (3, 4096), "version and header length")
    t.equal(crc, crc32c(sb[:16] + b"\0\0\0\0" + sb[20:]), "CRC-32C over the block")
    size, gran, kind = struct.unpack_from("<QII", sb, 56)
    t.equal((size, gran, kind), (3 << 30, 128 << 10, 1), "size, granularity, kind")
    t.check(sb[24:40] != bytes(16) and sb[40:56] != bytes(16), "volume and generation uuids set")

    rc, out = run("init", vol)
    t.check(rc != 0 and "--force" in out, f"re-init refuses without --force: {out}")
    t.equal(superblock(vol), sb, "refused re-init leaves the superblock alone")
    rc, out = run("init", vol, "--force")
    t.equal(rc, 0, "init --force succeeds")
    t.check(superblock(vol)[24:56] != sb[24:56], "--force makes new identities")

    rc, out = run("init", vol, "--size", "1G", "--force")
    t.check(rc != 0 and "size" in out, f"--size that disagrees with the file refuses: {out}")
    rc, out = run("init", os.path.join(W, "b.img"), "--size", "1G", "--granularity", "3K")
    t.equal(rc, 2, f"bad granularity is a usage error: {out}")
    t.check(not os.path.exists(os.path.join(W, "b.img")), "...and creates nothing")
    rc, out = run("init", os.path.join(W, "c.img"), "--size", "12Q")
    t.equal(rc, 2, f"bad size is a usage error: {out}")
    rc, out = run("init", W)
    t.check(rc != 0 and "regular file" in out, f"a directory is refused: {out}")
    rc, out = run("frobnicate")
    t.equal(rc, 2, "unknown command is a usage error")
    rc, out = run("help")
    t.check(rc == 0 and "serve VOLUME" in out, "help prints usage")


def test_serve_refusals():
    vol = os.path.join(W, "s.img")
    open(vol, "wb").truncate(1 << 20)
    rc, out = run("serve", vol)
    t.check(rc != 0 and "voltrack init" in out, f"serve without init says what to do: {out}")

    srv = Server(size=8 << 20).start()
    try:
        rc, out = run("serve", srv.volume, "--socket", os.path.join(W, "x.sock"))
        t.check(rc != 0 and "already being served" in out, f"second server refused: {out}")
        t.check(srv.alive(), "first server still running")
        h = srv.connect()
        t.equal(h.get_size(), 8 << 20, "first server still serves")
        h.shutdown()
        t.equal(srv.stop(signal.SIGINT), 0, "SIGINT stops with exit 0")

        sbpath = srv.meta + "/superblock"
        good = open(sbpath, "rb").read()
        bad = bytearray(good)
        bad[60] ^= 0x10
        open(sbpath, "wb").write(bad)
        rc, out = run("serve", srv.volume)
        t.check(rc != 0 and "corrupt" in out, f"corrupt superblock refused: {out}")
        open(sbpath, "wb").write(good[:100])
        rc, out = run("serve", srv.volume)
        t.check(rc != 0 and "corrupt" in out, f"truncated superblock refused: {out}")
        open(sbpath, "wb").write(good)

        with open(srv.volume, "r+b") as f:
            f.truncate(16 << 20)
        rc, out = run("serve", srv.volume)
        t.check(rc != 0 and "changed size" in out, f"resized volume refused: {out}")
    finally:
        srv.cleanup()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tcp():
    port = free_port()
    srv = Server(size=8 << 20, extra=["--listen", f"127.0.0.1:{port}"]).start()
    try:
        out = subprocess.run(["nbdinfo", "--size", f"nbd://127.0.0.1:{port}"],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        t.equal(out.stdout.strip(), str(8 << 20), f"TCP listener serves: {out.stderr}")
        t.check(os.path.exists(srv.sock), "the Unix socket is there too")
        t.equal(srv.stop(), 0, "TCP server stops cleanly")
    finally:
        srv.cleanup()
    rc, out = run("serve", "x.img", "--listen", "nonsense")
    t.check(rc != 0, "malformed --listen refused")


def test_socket_activation():
    srv = Server(size=8 << 20)
    path = os.path.join(srv.dir, "activated.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(8)
    log = open(srv.log_path, "wb")
    pid = os.fork()
    if pid == 0:
        os.dup2(lsock.fileno(), 3)
        os.set_inheritable(3, True)
        env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        os.dup2(log.fileno(), 2)
        os.execve(VOLTRACK, [VOLTRACK, "serve", srv.volume], env)
    lsock.close()
    try:
        for _ in range(200):
            if b"serving" in open(srv.log_path, "rb").read():
                break
            time.sleep(0.02)
        out = subprocess.run(["nbdinfo", "--size", f"nbd+unix:///?socket={path}"],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        t.equal(out.stdout.strip(), str(8 << 20), f"socket-activated server serves: {out.stderr}")
        t.check(not os.path.exists(srv.sock), "no default socket when activated")
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        t.equal(os.waitstatus_to_exitcode(status), 0, "activated server stops cleanly")
    finally:
        srv.cleanup()


try:
    test_init()
    test_serve_refusals()
    test_tcp()
    test_socket_activation()
finally:
    subprocess.run(["rm", "-rf", W])
t.finish()

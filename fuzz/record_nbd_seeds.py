#!/usr/bin/python3
"""Record what real NBD clients send, as seeds for fuzz_nbd.

Starts `voltrack serve` on a volume shaped like fuzz_nbd's (1 MiB, 4 KiB
blocks, checkpoints "a" and "b"), puts a recording relay between it and
each client (nbdinfo, qemu-img, qemu-io, nbdcopy, nbdsh), and writes the
client-to-server bytes of each session, which start with the client
flags as fuzz_nbd's inputs do, to fuzz/seeds/nbd/rec-NAME.

Usage: PATH=/usr/bin:/bin VOLTRACK=build/voltrack fuzz/record_nbd_seeds.py [OUTDIR]
(nbdsh needs the system python3, which has the nbd module)
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

VOLTRACK = os.environ.get("VOLTRACK", "build/voltrack")

NBDSH_SCRIPT = """
h.set_request_structured_replies(True)
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:dirty-bitmap:a")
h.add_meta_context("qemu:dirty-bitmap:b")
h.set_opt_mode(True)
h.connect_uri(uri)
h.opt_list(lambda name, desc: 0)
h.opt_info()
h.opt_list_meta_context(lambda name: 0)
h.opt_go()
h.pwrite(b"\\x5a" * 4096, 8192, nbd.CMD_FLAG_FUA)
h.zero(65536, 131072)
h.zero(4096, 196608, nbd.CMD_FLAG_NO_HOLE)
try:
    h.zero(4096, 262144, nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error:
    pass
h.trim(65536, 327680)
h.cache(65536, 0)
h.flush()
h.block_status(1 << 20, 0, lambda *a: 0)
h.block_status(65536, 4096, lambda *a: 0, nbd.CMD_FLAG_REQ_ONE)
h.pread_structured(4096, 0, lambda *a: 0, nbd.CMD_FLAG_DF)
h.shutdown()
"""


class Relay:
    """A Unix socket that forwards to the server and records the client."""

    def __init__(self, path, target):
        self.path, self.target, self.recorded = path, target, bytearray()
        self.ls = socket.socket(socket.AF_UNIX)
        self.ls.bind(path)
        self.ls.listen(1)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        c, _ = self.ls.accept()
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.target)

        def pump(src, dst, record):
            while True:
                try:
                    b = src.recv(65536)
                except OSError:
                    b = b""
                if not b:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if record:
                    self.recorded += b
                try:
                    dst.sendall(b)
                except OSError:
                    return
        back = threading.Thread(target=pump, args=(s, c, False), daemon=True)
        back.start()
        pump(c, s, True)
        back.join(10)
        c.close()
        s.close()

    def finish(self):
        self.thread.join(30)
        self.ls.close()
        os.unlink(self.path)
        return bytes(self.recorded)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "seeds", "nbd")
    tmp = tempfile.mkdtemp(prefix="voltrack-rec-")
    vol = os.path.join(tmp, "disk.img")
    sock = os.path.join(tmp, "server.sock")
    relay_path = os.path.join(tmp, "relay.sock")
    subprocess.run([VOLTRACK, "init", vol, "--size", "1M", "--granularity", "4K"],
                   check=True, stdout=subprocess.DEVNULL)
    for name in ("a", "b"):
        subprocess.run([VOLTRACK, "checkpoint", vol, name], check=True,
                       stdout=subprocess.DEVNULL)
    log = open(os.path.join(tmp, "serve.log"), "wb")
    srv = subprocess.Popen([VOLTRACK, "serve", vol, "--socket", sock], stderr=log)
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        uri = f"nbd+unix:///?socket={relay_path}"
        img = f"driver=nbd,server.type=unix,server.path={relay_path}"
        clients = {
            "nbdinfo-list": ["nbdinfo", "--list", uri],
            "nbdinfo-map-bitmap": ["nbdinfo", "--map=qemu:dirty-bitmap:a", uri],
            "nbdinfo-map": ["nbdinfo", "--map", uri],
            "qemu-img-map-bitmap": ["qemu-img", "map", "--output=json", "--image-opts",
                                    img + ",x-dirty-bitmap=qemu:dirty-bitmap:b"],
            "qemu-io-writes": ["qemu-io", "--image-opts", img,
                               "-c", "write -P 0x5a 0 8k", "-c", "write -z 64k 64k",
                               "-c", "discard 128k 64k", "-c", "read 0 8k",
                               "-c", "flush"],
            "nbdcopy-read": ["nbdcopy", "--connections=1", uri, "null:"],
            "nbdsh-every-command": ["nbdsh", "-c", NBDSH_SCRIPT.replace(
                "h.connect_uri(uri)", f"h.connect_uri({uri!r})")],
        }
        os.makedirs(outdir, exist_ok=True)
        for name, cmd in clients.items():
            if not shutil.which(cmd[0]):
                print(f"skipping {name}: no {cmd[0]}")
                continue
            relay = Relay(relay_path, sock)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=60)
            data = relay.finish()
            with open(os.path.join(outdir, "rec-" + name), "wb") as f:
                f.write(data)
            print(f"rec-{name}: {len(data)} bytes")
    finally:
        srv.terminate()
        srv.wait(30)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

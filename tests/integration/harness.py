"""Shared helpers for integration tests: run a real `voltrack serve`.

Tests check the server against independent references (a copy of the
expected volume kept in Python, or the backing file read directly),
never against the server's own view of itself.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

VOLTRACK = os.environ.get("VOLTRACK", "build/voltrack")
ENGINE = os.environ.get("VOLTRACK_IO_ENGINE", "auto")


class Failures:
    """Collects check results and prints the closing 'N passed, N failed'."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", flush=True)
        return cond

    def equal(self, got, want, what):
        return self.check(got == want, f"{what}: got {got!r}, want {want!r}")

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)


class Server:
    """A voltrack volume and a running server on it."""

    def __init__(self, size=64 << 20, extra=(), volume=None, init=True, granularity=None,
                 binary=None, env=None):
        self.dir = tempfile.mkdtemp(prefix="voltrack-it-")
        self.volume = volume or os.path.join(self.dir, "disk.img")
        self.meta = self.volume + ".voltrack"
        self.sock = os.path.join(self.meta, "nbd.sock")
        self.uri = f"nbd+unix:///?socket={self.sock}"
        self.log_path = os.path.join(self.dir, "serve.log")
        if init:
            args = [VOLTRACK, "init", self.volume]
            if not os.path.exists(self.volume):
                args += ["--size", str(size)]
            if granularity:
                args += ["--granularity", granularity]
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        self.extra = list(extra)
        # The server's binary and extra environment (a test build, say).
        self.binary = binary or VOLTRACK
        self.env = dict(os.environ, **env) if env else None
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        mark = self.log.tell()
        self.proc = subprocess.Popen(
            [self.binary, "serve", self.volume, "--io-engine", ENGINE] + self.extra,
            stderr=self.log, env=self.env)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_text()}")
            if b"serving" in open(self.log_path, "rb").read()[mark:]:
                return self
            time.sleep(0.02)
        raise RuntimeError(f"server did not start:\n{self.log_text()}")

    def log_text(self):
        return open(self.log_path, "rb").read().decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Stop the server; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
            status = f"hung, killed ({status})"
        self.proc = None
        self.log.close()
        return status

    def read_volume(self, off=0, length=None):
        with open(self.volume, "rb") as f:
            f.seek(off)
            return f.read() if length is None else f.read(length)

    def connect(self, structured=True, contexts=("base:allocation",), name=""):
        import nbd
        h = nbd.NBD()
        h.set_request_structured_replies(structured)
        for c in contexts:
            h.add_meta_context(c)
        h.set_export_name(name)
        h.connect_unix(self.sock)
        return h

    def cleanup(self):
        if self.alive():
            self.stop(signal.SIGKILL)
        subprocess.run(["rm", "-rf", self.dir])


def vt(*args, check=True):
    """Run a voltrack command; with check, a failure raises with its output."""
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"voltrack {' '.join(args)}: {p.returncode}\n{p.stderr}{p.stdout}")
    return p


def snap_uri(srv, name):
    return f"nbd+unix:///snapshot/{name}?socket={srv.sock}"


def read_export(srv, name, size):
    """All of snapshot/NAME, read over NBD."""
    h = srv.connect(name=f"snapshot/{name}")
    data = bytearray()
    for off in range(0, size, 1 << 20):
        data += h.pread(min(1 << 20, size - off), off)
    h.shutdown()
    return bytes(data)


def crc32c(data):
    """CRC-32C (Castagnoli), bit by bit: slow, and independent of the C one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def header_version(path, crc_at, version=None):
    """The format version (4 bytes at 8) of a 4096-byte metadata header
    whose CRC-32C (over the block with that field zero) is at crc_at;
    with `version`, rewrite it as an older voltrack would have written it."""
    with open(path, "r+b") as f:
        blk = bytearray(f.read(4096))
        if version is not None:
            blk[8:12] = version.to_bytes(4, "little")
            blk[crc_at:crc_at + 4] = bytes(4)
            blk[crc_at:crc_at + 4] = crc32c(bytes(blk)).to_bytes(4, "little")
            f.seek(0)
            f.write(blk)
    return int.from_bytes(blk[8:12], "little")


def map_blocks(uri, ctx, bit, unit):
    """The units (offset // unit) that nbdinfo --map=CTX reports with
    `bit` set in their flags, as a set."""
    out = subprocess.run(["nbdinfo", "--json", f"--map={ctx}", uri], check=True,
                         capture_output=True, text=True).stdout
    units = set()
    for e in json.loads(out):
        if e["type"] & bit:
            units.update(range(e["offset"] // unit, (e["offset"] + e["length"]) // unit))
    return units

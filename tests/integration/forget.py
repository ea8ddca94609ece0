#!/usr/bin/python3
"""Deleting checkpoints, seen from outside: the CLI, nbdinfo and libnbd.

A thousand checkpoints in a rolling window of 30 (take one, delete the
oldest beyond 30), with writes between them through a real NBD client;
every tenth step through the CLI, the others straight over the control
socket (what the CLI sends, without starting a process each time).
The reference is the test's own: a copy of the volume as the test wrote it,
kept as one hash per tracking block at each live checkpoint.  At the end,
`changes --since C` for every live C must be exactly the blocks whose hash
differs; `nbdinfo --map=qemu:dirty-bitmap:C` the same for a few.  A
connection that selected a checkpoint's context keeps answering right
across renumberings, and fails once that checkpoint is deleted.  Part of
the run has no server (the offline path).  delete's refusals change
nothing.
"""
import errno
import hashlib
import json
import os
import random
import socket
import subprocess
import time

import nbd

from harness import VOLTRACK, Failures, Server

t = Failures()
SIZE = 4 << 20
G = 16 << 10
NBLK = SIZE // G
STEPS = 1000
WINDOW = 30
ENV = {"PATH": "/usr/bin:/bin"}


def vt(*args):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def ctl(srv, *args):
    """A command over the control socket itself (doc/control.md), as the CLI
    sends it: much cheaper than starting a process, in sanitizer builds
    above all.  Returns what vt() returns."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.path.join(srv.meta, "control.sock"))
        s.sendall(b"".join(a.encode() + b"\0" for a in args))
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status, text = int(reply[:1]), reply[1:].decode()
    return (status, text, "") if status == 0 else (status, "", text)


def blocks_of(extents):
    out = set()
    for off, length in extents:
        out.update(range(off // G, (off + length + G - 1) // G))
    return out


class Model:
    """The volume as the test wrote it, and block hashes at checkpoints."""

    def __init__(self):
        self.data = bytearray(SIZE)
        self.refs = {}

    def write(self, h, off, buf):
        h.pwrite(buf, off)
        self.data[off:off + len(buf)] = buf

    def hashes(self):
        return [hashlib.blake2b(self.data[b * G:(b + 1) * G], digest_size=16).digest()
                for b in range(NBLK)]

    def changed_since(self, name):
        now = self.hashes()
        return {b for b in range(NBLK) if now[b] != self.refs[name][b]}


def changes(vol, name):
    rc, out, err = vt("changes", vol, "--since", name, "--json")
    if not t.equal(rc, 0, f"changes --since {name}: {err}"):
        return set()
    return blocks_of((e["offset"], e["length"]) for e in json.loads(out)["extents"])


def bitmap(h, ctx, length=SIZE):
    """Dirty blocks of context ctx on connection h."""
    got = set()
    off = 0
    while off < length:
        seen = []

        def cb(metacontext, offset, entries, err):
            if metacontext == ctx:
                seen.append((offset, entries))
            return 0
        h.block_status(length - off, off, cb)
        for start, entries in seen:
            pos = start
            for i in range(0, len(entries), 2):
                if entries[i + 1] & 1:
                    got |= blocks_of([(pos, entries[i])])
                pos += entries[i]
            off = max(off, pos)
    return got


def nbdinfo_dirty(uri, ctx):
    out = subprocess.run(["nbdinfo", "--json", f"--map={ctx}", uri], capture_output=True,
                         text=True, env=ENV)
    t.equal(out.returncode, 0, f"nbdinfo --map={ctx}: {out.stderr}")
    return blocks_of((e["offset"], e["length"]) for e in json.loads(out.stdout)
                     if e["type"] & 1)


def ckpt_file(srv):
    with open(os.path.join(srv.meta, "checkpoints"), "rb") as f:
        return f.read()


def refusals(srv, live):
    """delete's errors: clear, non-zero, and nothing changed."""
    vol = srv.volume
    where = "with a server" if live else "offline"
    before, (_, listed, _) = ckpt_file(srv), vt("list", vol, "--json")
    rc, _, err = vt("delete", vol, "nosuch", "--forget")
    t.check(rc == 1 and "no checkpoint named 'nosuch'" in err and err.count("\n") == 1,
            f"{where}: delete of a missing name fails in one line: {rc} {err!r}")
    rc, _, err = vt("delete", vol, "bad name!", "--forget")
    t.check(rc == 2 and "not a valid checkpoint name" in err,
            f"{where}: delete of a malformed name is a usage error: {rc} {err!r}")
    name = json.loads(listed)[0]["name"]
    rc, _, err = vt("delete", vol, name)
    t.check(rc == 1 and "no snapshot named" in err and "--forget" in err
            and err.count("\n") == 1,
            f"{where}: delete without --forget says there is no snapshot and names "
            f"--forget: {rc} {err!r}")
    rc, _, err = vt("delete", vol)
    t.equal(rc, 2, f"{where}: delete without a NAME is a usage error: {err!r}")
    rc, _, err = vt("delete", vol, name, "--forget", "--bogus")
    t.equal(rc, 2, f"{where}: an unknown option is a usage error: {err!r}")
    t.check(ckpt_file(srv) == before, f"{where}: the checkpoint list is untouched")
    t.equal(vt("list", vol, "--json")[1], listed, f"{where}: list is unchanged")


def main():
    rng = random.Random(int(os.environ.get("VOLTRACK_FORGET_SEED", time.time())))
    srv = Server(size=SIZE, granularity="16K").start()
    m = Model()
    live = []          # checkpoint names, oldest first
    held = {}          # connections holding one checkpoint's context
    offline = range(500, 511)
    try:
        vol = srv.volume
        h = srv.connect()
        t0 = time.time()
        for step in range(1, STEPS + 1):
            if step == offline.start:
                h.shutdown()
                t.equal(srv.stop(), 0, "the server stops cleanly mid-run")
            if step == offline.stop:
                srv.start()
                h = srv.connect()
            if step not in offline:
                for _ in range(rng.choice((1, 1, 2))):
                    n = rng.randrange(1, 3 * G)
                    off = rng.randrange(0, SIZE - n)
                    m.write(h, off, rng.randbytes(n))
            name = f"k{step}"
            # Every tenth step, and every step without a server, through
            # the CLI; the others straight over the control socket.
            run = vt if step % 10 == 0 or step in offline else \
                lambda *a: ctl(srv, *a[:1], *a[2:])
            rc, out, err = run("checkpoint", vol, name)
            if not t.equal(rc, 0, f"checkpoint {name}: {err}"):
                break
            m.refs[name] = m.hashes()
            live.append(name)
            if len(live) > WINDOW:
                old = live.pop(0)
                rc, out, err = run("delete", vol, old, "--forget")
                if not t.check(rc == 0 and f"checkpoint {old} deleted" in out,
                               f"delete {old} --forget: {rc} {out}{err}"):
                    break
                del m.refs[old]

            # A connection selects k520; it must answer right while others
            # are deleted (renumberings), and fail once k520 itself is.
            if step == 520:
                held["k520"] = srv.connect(contexts=("qemu:dirty-bitmap:k520",))
            if step == 545:
                t.equal(bitmap(held["k520"], "qemu:dirty-bitmap:k520"),
                        m.changed_since("k520"),
                        "a selected context answers right after 25 renumberings")
            if step == 551:
                try:
                    bitmap(held["k520"], "qemu:dirty-bitmap:k520")
                    t.check(False, "a context whose checkpoint was deleted must fail")
                except nbd.Error as e:
                    t.equal(e.errnum, errno.EINVAL,
                            f"the deleted checkpoint's context fails with EINVAL: {e}")
                held.pop("k520").shutdown()
            if step == 975:
                held["k975"] = srv.connect(contexts=("qemu:dirty-bitmap:k975",))
        print(f"{STEPS} checkpoints in {time.time() - t0:.1f} s", flush=True)
        for _ in range(3):     # and some after the last one
            n = rng.randrange(1, 3 * G)
            m.write(h, rng.randrange(0, SIZE - n), rng.randbytes(n))
        h.flush()

        t.equal([c["name"] for c in json.loads(vt("list", vol, "--json")[1])], live,
                "list shows exactly the live window, oldest first")
        rc, out, _ = vt("status", vol, "--json")
        st = json.loads(out)
        t.equal((st["checkpoints"], st["open-epoch"]), (WINDOW, WINDOW + 1),
                "the epochs stay compact after a thousand checkpoints")
        t.check(m.data == bytearray(srv.read_volume()), "the volume is what the test wrote")

        exact = 0
        for name in live:
            want = m.changed_since(name)
            exact += t.equal(changes(vol, name), want, f"changes --since {name} is exact")
        print(f"changes exact for {exact} of {len(live)} live checkpoints", flush=True)
        t.check(len(m.changed_since(live[0])) > len(m.changed_since(live[-1])) > 0,
                "premise: the checkpoints' answers differ and are not empty")
        for name in (live[0], live[len(live) // 2], live[-1]):
            t.equal(nbdinfo_dirty(srv.uri, f"qemu:dirty-bitmap:{name}"),
                    m.changed_since(name), f"nbdinfo --map of {name} agrees")
        t.equal(bitmap(held["k975"], "qemu:dirty-bitmap:k975"), m.changed_since("k975"),
                "a connection held across 25 renumberings answers right")
        held.pop("k975").shutdown()

        ctxs = []
        h2 = nbd.NBD()
        h2.set_opt_mode(True)
        h2.connect_unix(srv.sock)
        h2.opt_list_meta_context(lambda c: ctxs.append(c))
        h2.opt_abort()
        t.equal(sorted(c for c in ctxs if c.startswith("qemu:")),
                sorted(f"qemu:dirty-bitmap:{n}" for n in live),
                "new connections see exactly the live checkpoints' contexts")

        refusals(srv, True)
        h.shutdown()
        t.equal(srv.stop(), 0, "the server stops cleanly")
        refusals(srv, False)
        for name in live[::7]:
            t.equal(changes(vol, name), m.changed_since(name),
                    f"offline, changes --since {name} is still exact")
        rc, out, _ = vt("check", vol)
        t.check(rc == 0 and "renumbered" in out, f"check finds the metadata sound: {out}")
    finally:
        for c in held.values():
            c.shutdown()
        srv.cleanup()
    t.finish()


main()

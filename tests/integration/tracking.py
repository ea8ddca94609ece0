#!/usr/bin/python3
"""Changed-block tracking seen from outside: CLI, qemu-img, nbdinfo.

The expected changes are what this test wrote, kept in Python, and the
backing file itself; never voltrack's own answer.
"""
import json
import os
import re
import subprocess

import nbd

from harness import VOLTRACK, Failures, Server

t = Failures()
SIZE = 256 << 20
G = 64 << 10
ENV = {"PATH": "/usr/bin:/bin"}


def vt(*args, check=False):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"voltrack {' '.join(args)}: {p.stderr}")
    return p.returncode, p.stdout, p.stderr


def blocks_of(extents):
    """Set of block numbers covered by (offset, length) pairs."""
    out = set()
    for off, length in extents:
        out.update(range(off // G, (off + length + G - 1) // G))
    return out


def changes(vol, since):
    rc, out, err = vt("changes", vol, "--since", since, "--json")
    t.equal(rc, 0, f"changes --since {since}: {err}")
    j = json.loads(out)
    t.equal(j["granularity"], G, "changes reports the granularity")
    ext = [(e["offset"], e["length"]) for e in j["extents"]]
    for (o1, l1), (o2, _) in zip(ext, ext[1:]):
        t.check(o1 + l1 < o2, f"extents are merged and sorted: {ext}")
    return blocks_of(ext)


def nbdinfo_dirty(uri, ctx):
    out = subprocess.run(["nbdinfo", "--json", f"--map={ctx}", uri], capture_output=True,
                         text=True, env=ENV)
    t.equal(out.returncode, 0, f"nbdinfo --map={ctx}: {out.stderr}")
    return blocks_of((e["offset"], e["length"]) for e in json.loads(out.stdout)
                     if e["type"] & 1)


def qemu_img_dirty(sock, ctx):
    opts = f"driver=nbd,server.type=unix,server.path={sock},x-dirty-bitmap={ctx}"
    out = subprocess.run(["qemu-img", "map", "--output=json", "--image-opts", opts],
                         capture_output=True, text=True, env=ENV)
    t.equal(out.returncode, 0, f"qemu-img map x-dirty-bitmap: {out.stderr}")
    # With x-dirty-bitmap, dirty ranges show as "data": false.
    return blocks_of((e["start"], e["length"]) for e in json.loads(out.stdout) if not e["data"])


def worked_example():
    srv = Server(size=SIZE).start()
    try:
        vol = srv.volume
        h = srv.connect()
        h.pwrite(os.urandom(1 << 20), 0)          # before any checkpoint
        rc, out, err = vt("checkpoint", vol, "mon")
        t.check(rc == 0 and "mon" in out, f"checkpoint while serving: {out}{err}")

        written = set()
        for off, n in [(5 * G + 100, 10), (100 << 20, 3 * G), (SIZE - 1, 1)]:
            h.pwrite(b"x" * n, off)
            written |= blocks_of([(off, n)])
        h.zero(2 * G, 40 << 20)
        written |= blocks_of([(40 << 20, 2 * G)])
        h.trim(G, 60 << 20)
        written |= blocks_of([(60 << 20, G)])

        # Exactly, not "at least": this is also where invariant I3 shows.
        # If the tracker's own metadata I/O went through the tracked path
        # (or landed on the volume), extra blocks would appear here.
        t.equal(changes(vol, "mon"), written, "changes since 'mon' is exactly what was written")
        t.equal(nbdinfo_dirty(srv.uri, "qemu:dirty-bitmap:mon"), written,
                "nbdinfo --map of the dirty bitmap agrees")
        t.equal(qemu_img_dirty(srv.sock, "qemu:dirty-bitmap:mon"), written,
                "qemu-img map with x-dirty-bitmap agrees")

        # A checkpoint made now is visible to new connections at once.
        vt("checkpoint", vol, "tue", check=True)
        h.pwrite(b"y" * 4096, 200 << 20)
        later = blocks_of([(200 << 20, 4096)])
        t.equal(changes(vol, "tue"), later, "changes since the newer checkpoint")
        t.equal(changes(vol, "mon"), written | later, "older checkpoint includes newer writes")
        ctxs = []
        h2 = nbd.NBD()
        h2.set_opt_mode(True)
        h2.connect_unix(srv.sock)
        h2.opt_list_meta_context(lambda name: ctxs.append(name))
        t.equal(sorted(ctxs), ["base:allocation", "qemu:dirty-bitmap:mon",
                               "qemu:dirty-bitmap:tue"], "contexts list the checkpoints")
        h2.opt_abort()
        h.shutdown()

        rc, _, err = vt("checkpoint", vol, "mon")
        t.check(rc != 0 and "already exists" in err, f"duplicate name refused: {err}")
        rc, _, err = vt("checkpoint", vol, "bad name!")
        t.equal(rc, 2, f"invalid name refused as usage error: {err}")
        rc, _, err = vt("changes", vol, "--since", "nope")
        t.check(rc != 0 and "nope" in err, f"unknown checkpoint refused: {err}")
        rc, _, err = vt("changes", vol, "--since", "tue", "--until", "mon")
        t.check(rc != 0, f"--until older than --since refused: {err}")
        rc, out, _ = vt("changes", vol, "--since", "mon", "--until", "tue")
        got = set()
        for line in out.split("\n"):
            if line:
                o, n = map(int, line.split())
                got |= blocks_of([(o, n)])
        t.check(written <= got, "--until never drops a block changed in the interval")

        rc, out, _ = vt("list", vol, "--json")
        lst = json.loads(out)
        t.equal([c["name"] for c in lst], ["mon", "tue"], "list names in order")
        t.equal(lst[1]["changed-bytes"], G, "list counts changed bytes since 'tue'")
        rc, out, _ = vt("status", vol, "--json")
        st = json.loads(out)
        t.equal((st["granularity"], st["checkpoints"]), (G, 2), "status granularity, checkpoints")
        t.equal(st["state"], "clean", "fresh volume started clean")

        t.equal(srv.stop(), 0, "server stops cleanly")
        # After a clean stop the answers are the same, offline.
        t.equal(changes(vol, "mon"), written | later, "answer survives a clean restart (offline)")
        rc, out, _ = vt("status", vol, "--json")
        t.equal(json.loads(out)["intent-regions-set"], 0, "a clean stop leaves no intents set")
        srv.start()
        t.equal(nbdinfo_dirty(srv.uri, "qemu:dirty-bitmap:mon"), written | later,
                "and online after restart")
        t.equal(srv.stop(), 0, "server stops cleanly again")

        # Offline change: modify the file while nothing tracks it.
        with open(vol, "r+b") as f:
            f.seek(123456)
            f.write(b"sneaky")
        rc, out, err = vt("status", vol)
        t.check("modified-offline" in out, f"status says the volume was modified offline: {out}")
        every = set(range(SIZE // G))
        t.equal(changes(vol, "mon"), every, "offline change: everything changed since 'mon'")
        t.equal(changes(vol, "tue"), every, "...and since 'tue'")
        rc, out, _ = vt("check", vol)
        t.equal(rc, 0, f"metadata itself is sound after the reset: {out}")
    finally:
        srv.cleanup()


def control_hostile():
    """Malformed requests on the control socket: a clear error, no harm."""
    import socket
    import threading
    import time
    srv = Server(size=SIZE).start()
    try:
        vol = srv.volume
        vt("checkpoint", vol, "keep", check=True)
        path = os.path.join(srv.meta, "control.sock")

        def ask(payload, half_close=True):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.settimeout(10)
            try:
                s.sendall(payload)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except ConnectionResetError:
                pass
            s.close()
            return out

        out = ask(b"status")
        t.check(out[:1] == b"2" and b"NUL" in out, f"argument without its NUL: usage error: {out!r}")
        out = ask(b"x" * 65536)
        t.check(out[:1] == b"2" and b"too long" in out.lower(), f"64 KiB request refused: {out!r}")
        out = ask(b"list\0" + b"a\0" * 100)
        t.check(out[:1] == b"2", f"100 arguments refused, not truncated: {out!r}")
        out = ask(b"frobnicate\0")
        t.check(out[:1] == b"2" and b"unknown command" in out, f"unknown command: {out!r}")
        out = ask(b"checkpoint\0\0")
        t.check(out[:1] == b"2" and b"not a valid" in out, f"empty name reaches the check: {out!r}")
        out = ask(b"changes\0--since\0")
        t.check(out[:1] == b"2", f"option without its value: {out!r}")

        # A client that connects and says nothing delays others only
        # until the request timeout.
        stall = socket.socket(socket.AF_UNIX)
        stall.connect(path)
        start = time.time()
        rc, out, err = vt("status", vol)
        t.check(rc == 0 and time.time() - start < 8, f"status answers despite a stalled client: {err}")
        stall.close()

        rc, out, _ = vt("list", vol, "--json")
        t.equal([c["name"] for c in json.loads(out)], ["keep"], "checkpoints untouched by the abuse")
        h = srv.connect()
        h.pwrite(b"q" * 512, 0)
        h.shutdown()
        t.check(srv.alive(), "server alive after control-socket abuse")
        t.equal(srv.stop(), 0, "and stops cleanly")
    finally:
        srv.cleanup()


def corruption():
    """Flip bits and truncate each metadata file: never reported clean."""
    cases = [("checkpoints", 100, "flip"), ("changemap", 4096 * 3 + 700, "flip"),
             ("intent", 40, "flip"), ("changemap", 4096 * 2, "truncate"),
             ("intent", 100, "truncate"), ("checkpoints", 10, "truncate")]
    for name, where, how in cases:
        srv = Server(size=SIZE).start()
        try:
            vol = srv.volume
            h = srv.connect()
            vt("checkpoint", vol, "c", check=True)
            h.pwrite(b"z" * 4096, 7 * G)
            h.shutdown()
            t.equal(srv.stop(), 0, "stop before corrupting")
            gen_before = json.loads(vt("status", vol, "--json", check=True)[1])["generation"]
            path = os.path.join(srv.meta, name)
            if how == "flip":
                with open(path, "r+b") as f:
                    f.seek(where)
                    b = f.read(1)
                    f.seek(where)
                    f.write(bytes([b[0] ^ 0x40]))
            else:
                os.truncate(path, where)
            rc, out, _ = vt("check", vol)
            t.check(rc != 0, f"check reports {how} of {name}: {out}")
            srv.start()  # serve must start (origin first) or refuse clearly
            t.check(srv.alive(), f"serve runs after {how} of {name}")
            log = srv.log_text()
            t.check("warning:" in log or "error:" in log,
                    f"serve says loudly what it doubts after {how} of {name}: {log}")
            rc, out, err = vt("changes", vol, "--since", "c", "--json")
            if rc == 0:
                got = blocks_of((e["offset"], e["length"]) for e in json.loads(out)["extents"])
                t.check(7 in got, f"the write after 'c' is still reported after {how} of {name}")
            else:
                t.check("no checkpoint" in err, f"or the chain is declared broken: {err}")
                # A lost checkpoint is lost history: a new generation says
                # so, or the name could come back for another instant.
                gen_after = json.loads(vt("status", vol, "--json", check=True)[1])["generation"]
                t.check(gen_after != gen_before,
                        f"a new generation after {how} of {name} lost checkpoint 'c'")
            t.equal(srv.stop(), 0, f"clean stop after {how} of {name}")
            rc, out, _ = vt("check", vol)
            t.equal(rc, 0, f"metadata is sound again after a clean stop: {out}")
        finally:
            srv.cleanup()


def unreadable_is_not_damage():
    """A checkpoint list that cannot be read (here a directory stands in
    its place, so reads fail with EISDIR) says nothing of its content:
    serve refuses with the error and the history is left as it was."""
    srv = Server(size=SIZE).start()
    try:
        vol = srv.volume
        vt("checkpoint", vol, "keep", check=True)
        t.equal(srv.stop(), 0, "stop")
        gen = json.loads(vt("status", vol, "--json", check=True)[1])["generation"]
        path = os.path.join(srv.meta, "checkpoints")
        os.rename(path, path + ".aside")
        os.mkdir(path)
        p = subprocess.run([VOLTRACK, "serve", vol], capture_output=True, text=True, timeout=30)
        t.check(p.returncode != 0 and "Is a directory" in p.stderr,
                f"serve refuses a checkpoint list it cannot read: {p.returncode} {p.stderr}")
        os.rmdir(path)
        os.rename(path + ".aside", path)
        st = json.loads(vt("status", vol, "--json", check=True)[1])
        t.equal(st["generation"], gen, "the history was not reset by a failed read")
        rc, out, _ = vt("list", vol, "--json")
        t.equal([c["name"] for c in json.loads(out)], ["keep"], "the checkpoint is still there")
    finally:
        srv.cleanup()


worked_example()
control_hostile()
corruption()
unreadable_is_not_damage()
t.finish()

#!/usr/bin/python3
"""kill -9 trials: invariant I1 against reference copies.

A volume is filled, checkpointed and copied as the reference.  fio then
writes (mixed sizes, with fsync) and trims through a live server, which
is killed with SIGKILL at a random moment and restarted.  Every block
whose content differs from a checkpoint's reference copy must be
reported changed since that checkpoint, by `voltrack changes` and by
`nbdinfo --map=qemu:dirty-bitmap:...`.  Checkpoints accumulate across
trials, so older ones are checked across repeated crashes.

VOLTRACK_CRASH_TRIALS sets the number of trials (10 in `make check`,
1000 in `make torture`).  Prints missed blocks (must be 0) and the
bytes reported changed that were not.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time

from harness import VOLTRACK, Failures, Server

t = Failures()
TRIALS = int(os.environ.get("VOLTRACK_CRASH_TRIALS", "10"))
SIZE = 512 << 20
G = 64 << 10
REGION = 64 << 20
ZONE = 3 * REGION          # what one trial's fio touches
KEEP_REFS = 3
ENV = {"PATH": "/usr/bin:/bin"}
rnd = random.Random(int(os.environ.get("VOLTRACK_CRASH_SEED", str(os.getpid()))))


def vt(*args):
    return subprocess.run([VOLTRACK, *args], capture_output=True, text=True)


def changed_blocks(extents):
    out = set()
    for off, length in extents:
        out.update(range(off // G, (off + length + G - 1) // G))
    return out


def differing_blocks(a, b):
    """Blocks whose bytes differ between two files: the ground truth."""
    diff = set()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        blk = 0
        while True:
            x, y = fa.read(G * 64), fb.read(G * 64)
            if not x and not y:
                break
            if x != y:
                for i in range(0, max(len(x), len(y)), G):
                    if x[i:i + G] != y[i:i + G]:
                        diff.add(blk + i // G)
            blk += 64
    return diff


def reported_cli(vol, name):
    p = vt("changes", vol, "--since", name, "--json")
    if p.returncode:
        raise RuntimeError(p.stderr)
    return changed_blocks((e["offset"], e["length"]) for e in json.loads(p.stdout)["extents"])


def reported_nbd(uri, name):
    p = subprocess.run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", uri],
                       capture_output=True, text=True, env=ENV)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return changed_blocks((e["offset"], e["length"]) for e in json.loads(p.stdout) if e["type"] & 1)


def start_load(uri, zone):
    args = ["fio", "--ioengine=nbd", f"--uri={uri}", "--output=/dev/null",
            f"--offset={zone}", f"--size={ZONE}", "--time_based", "--runtime=60",
            "--randrepeat=0", "--norandommap",
            "--name=w", "--rw=randwrite", "--bsrange=512-256k", "--iodepth=16", "--fsync=8",
            "--name=t", "--rw=randtrim", "--bs=64k", "--iodepth=4"]
    # Its own process group: fio's job processes outlive a SIGKILL of
    # the parent, so the whole group is ended.
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)


def end_load(load):
    try:
        os.killpg(load.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    load.wait()


srv = Server(size=SIZE, init=False)
with open(srv.volume, "wb") as f:
    for _ in range(SIZE // (8 << 20)):
        f.write(os.urandom(8 << 20))
subprocess.run([VOLTRACK, "init", srv.volume], check=True, stdout=subprocess.DEVNULL)
srv.extra = ["--persist-interval", "50"]
srv.start()

refs = []          # (checkpoint name, reference copy)
load = None
missed_total = over_total = checks = 0
worst_over = 0
try:
    for trial in range(TRIALS):
        if trial % 3 == 0:
            name = f"c{trial}"
            p = vt("checkpoint", srv.volume, name)
            t.equal(p.returncode, 0, f"checkpoint {name}: {p.stderr}")
            ref = os.path.join(srv.dir, f"ref-{name}.img")
            shutil.copyfile(srv.volume, ref)
            refs.append((name, ref))
            if len(refs) > KEEP_REFS:  # keep the oldest: it spans every crash
                os.unlink(refs.pop(1)[1])

        zone = rnd.randrange(0, (SIZE - ZONE) // REGION + 1) * REGION
        before = os.stat(srv.volume).st_mtime_ns
        load = start_load(srv.uri, zone)
        # fio takes a moment to start: kill only once it is writing, so
        # that every trial has changes to find.
        deadline = time.time() + 10
        while os.stat(srv.volume).st_mtime_ns == before and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.05, 1.0))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        srv.proc = None
        srv.log.close()
        end_load(load)

        srv.start()  # recovery
        for name, ref in refs:
            truth = differing_blocks(srv.volume, ref)
            if name == refs[-1][0]:
                # the premise: this trial's writes changed something
                t.check(len(truth) > 0, f"trial {trial}: the load changed no block")
            for how, got in (("changes", reported_cli(srv.volume, name)),
                             ("nbdinfo", reported_nbd(srv.uri, name))):
                missed = truth - got
                over = len(got - truth) * G
                checks += 1
                missed_total += len(missed)
                over_total += over
                worst_over = max(worst_over, over)
                t.equal(sorted(missed)[:10], [],
                        f"trial {trial}: {how} since {name} misses changed blocks")
    t.equal(srv.stop(), 0, "server stops cleanly after the trials")
    p = vt("check", srv.volume)
    t.equal(p.returncode, 0, f"metadata sound after {TRIALS} crashes: {p.stdout}")
finally:
    if load is not None:
        end_load(load)
    srv.cleanup()

print(f"crash trials: {TRIALS}, checks: {checks}, missed blocks: {missed_total}, "
      f"over-reported: {over_total / max(checks, 1) / (1 << 20):.1f} MiB per check on average, "
      f"{worst_over / (1 << 20):.1f} MiB at worst (volume {SIZE >> 20} MiB, "
      f"one trial writes {ZONE >> 20} MiB)")
t.finish()

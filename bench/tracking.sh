#!/bin/bash
# Tracking figures on a 1 TiB sparse volume at 64 KiB granularity, and
# checkpoint latency under full write load.  Called by run.sh; prints
# one line per figure with its target.
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
VOLTRACK=${1:-build/voltrack}
W=$(mktemp -d -t voltrack-track.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT
VOL=$W/big.img SOCK=$W/big.img.voltrack/nbd.sock URI="nbd+unix:///?socket=$W/big.img.voltrack/nbd.sock"
now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')"; }
wait_ready() { # pid: until the server answers
	for _ in $(seq 2000); do nbdinfo --size "$URI" >/dev/null 2>&1 && return 0; sleep 0.005; done
	echo "server did not come up"; return 1
}

t0=$(now); "$VOLTRACK" init "$VOL" --size 1T >/dev/null; t1=$(now)
echo "1 TiB volume: init $(ms "$t0" "$t1") ms"
"$VOLTRACK" serve "$VOL" 2>"$W/serve.log" & P=$!
wait_ready
"$VOLTRACK" checkpoint "$VOL" base >/dev/null
# 20000 writes scattered over the whole terabyte, then a burst in one place
fio --name=scatter --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
	--size=1T --number_ios=20000 --norandommap --output=/dev/null
fio --name=burst --ioengine=nbd --uri="$URI" --rw=write --bs=1m --iodepth=8 \
	--offset=300G --size=2G --output=/dev/null

t0=$(now); "$VOLTRACK" changes "$VOL" --since base --json >"$W/changes.json"; t1=$(now)
n=$(python3 -c "import json;print(len(json.load(open('$W/changes.json'))['extents']))")
echo "voltrack changes over 1 TiB ($n extents): $(ms "$t0" "$t1") ms   (target < 500)"
t0=$(now); nbdinfo --map=qemu:dirty-bitmap:base "$URI" >"$W/map.txt"; t1=$(now)
echo "nbdinfo --map of qemu:dirty-bitmap over 1 TiB: $(ms "$t0" "$t1") ms   (target < 2000)"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$P/status")
echo "server RSS with a 1 TiB map: $((rss / 1024)) MiB   (tracker target <= 24 MiB; map is 16 MiB)"

# kill -9 under load, then time start-up with recovery until it serves
fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
	--size=1T --time_based --runtime=30 --norandommap --output=/dev/null 2>/dev/null & F=$!
sleep 2
kill -9 $P; wait $P 2>/dev/null || true
kill $F 2>/dev/null; wait $F 2>/dev/null || true
t0=$(now)
"$VOLTRACK" serve "$VOL" 2>>"$W/serve.log" & P=$!
wait_ready
t1=$(now)
echo "start-up with recovery after kill -9: $(ms "$t0" "$t1") ms   (target < 1000)"
grep -o "not closed cleanly.*" "$W/serve.log" | tail -1 | sed 's/^/  recovery: /'

# Checkpoints while fio writes at full rate, seen two ways: over the
# control socket from a running program (what backup software and the
# snapshot command see), and as a `voltrack checkpoint` process, whose
# start-up on two saturated cores is most of its time.
fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
	--size=64G --time_based --runtime=40 --output=/dev/null & F=$!
sleep 2
python3 - "$W/big.img.voltrack/control.sock" "$W/floor" <<'PY'
import os, socket, sys, time
# The floor: what one durable 4 KiB write costs on this file system under
# the same load (a pwrite and an fdatasync of a file beside the metadata),
# interleaved with the checkpoints.  A checkpoint is one such write.
fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"\0" * 4096, 0)
os.fsync(fd)
v, floor = [], []
for i in range(50):
    t0 = time.perf_counter()
    os.pwrite(fd, bytes([i]) * 4096, 0)
    os.fdatasync(fd)
    floor.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.1)
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"checkpoint\0sock%d\0" % i)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(4096):
        reply += chunk
    s.close()
    assert reply.startswith(b"0"), reply
    v.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.1)
v.sort()
floor.sort()
pct = lambda v, p: v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"checkpoint under full write load, {len(v)} runs (control socket round trip): "
      f"p50 {pct(v, 50):.1f} ms, p99 {pct(v, 99):.1f} ms   (target < 20)")
print(f"  the floor, a 4 KiB pwrite + fdatasync beside it under the same load: "
      f"p50 {pct(floor, 50):.1f} ms, p99 {pct(floor, 99):.1f} ms")
PY
for i in $(seq 50); do
	t0=$(now); "$VOLTRACK" checkpoint "$VOL" "load$i" >/dev/null; t1=$(now)
	ms "$t0" "$t1"
	sleep 0.2
done >"$W/ckpt.txt"
kill $F 2>/dev/null; wait $F 2>/dev/null || true
python3 - "$W/ckpt.txt" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]))
pct = lambda p: v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"checkpoint under full write load, {len(v)} runs (voltrack checkpoint process): "
      f"p50 {pct(50)} ms, p99 {pct(99)} ms")
PY
kill -TERM $P
st=0; wait $P || st=$?
if [ "$st" -ne 0 ]; then
	echo "serve exited with status $st after SIGTERM; its log ends:"
	tail -5 "$W/serve.log"
	exit 1
fi

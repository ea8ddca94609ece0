#!/bin/bash
# Side-by-side write-path benchmark: the same fio jobs, in one run, against
# voltrack and the servers users would otherwise pick.  Prints IOPS, p99
# latency and voltrack's ratio to each peer, and voltrack's peak RSS.
#
#   bench/run.sh [SIZE] [RUNTIME_SECONDS]      (defaults: 1G 10)
#
# The machine is shared by client and server, so absolute numbers move
# from run to run; the ratios within one run are what to compare.
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
SIZE=${1:-1G} RT=${2:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
VOLTRACK=${VOLTRACK:-$HERE/../build/voltrack}
W=$(mktemp -d -t voltrack-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT

JOBS=("randw4k-qd32 randwrite 4k 32" "seqw1m-qd8 write 1m 8" "randr4k-qd32 randread 4k 32")

fio_job() { # server job uri rw bs depth
	fio --name="$2" --ioengine=nbd --uri="$3" --rw="$4" --bs="$5" --iodepth="$6" \
	    --size="$SIZE" --time_based --runtime="$RT" --ramp_time=1 --numjobs=1 \
	    --output-format=json --output="$W/$1.$2.json" >/dev/null 2>"$W/$1.$2.err" ||
		echo "$1 $2 FAILED: $(tail -1 "$W/$1.$2.err")" >&2
}
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }
workloads() { # server uri
	for j in "${JOBS[@]}"; do set -- $j; fio_job "$SERVER" "$1" "$URI" "$2" "$3" "$4"; done
}

# voltrack
truncate -s "$SIZE" "$W/vt.img"
"$VOLTRACK" init "$W/vt.img" >/dev/null
"$VOLTRACK" serve "$W/vt.img" 2>"$W/vt.log" & VT=$!
wait_sock "$W/vt.img.voltrack/nbd.sock"
SERVER=voltrack URI="nbd+unix:///?socket=$W/vt.img.voltrack/nbd.sock" workloads
grep VmHWM "/proc/$VT/status" | awk '{print $2}' >"$W/voltrack.rss"
kill -TERM $VT; wait $VT

# voltrack with tracking off: the cost of tracking is the ratio to this
truncate -s "$SIZE" "$W/nt.img"
"$VOLTRACK" init "$W/nt.img" >/dev/null
"$VOLTRACK" serve "$W/nt.img" --no-track 2>"$W/nt.log" & NT=$!
wait_sock "$W/nt.img.voltrack/nbd.sock"
SERVER=voltrack-no-track URI="nbd+unix:///?socket=$W/nt.img.voltrack/nbd.sock" workloads
kill -TERM $NT; wait $NT

# nbdkit file plugin: plain passthrough
truncate -s "$SIZE" "$W/raw.img"
nbdkit --foreground --unix "$W/nbdkit.sock" file "$W/raw.img" & P=$!
wait_sock "$W/nbdkit.sock"
SERVER=nbdkit-file URI="nbd+unix:///?socket=$W/nbdkit.sock" workloads
kill $P; wait $P 2>/dev/null || true

# qemu-storage-daemon on a raw file
truncate -s "$SIZE" "$W/raw2.img"
qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$W/raw2.img" \
	--nbd-server addr.type=unix,addr.path="$W/qsd.sock" \
	--export type=nbd,id=e,node-name=f,name=,writable=on & P=$!
wait_sock "$W/qsd.sock"
SERVER=qsd-raw URI="nbd+unix:///?socket=$W/qsd.sock" workloads
kill $P; wait $P 2>/dev/null || true

# qemu-storage-daemon, qcow2 with a persistent dirty bitmap: QEMU's CBT
qemu-img create -q -f qcow2 "$W/cbt.qcow2" "$SIZE"
qemu-img bitmap --add "$W/cbt.qcow2" b0
qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$W/cbt.qcow2" \
	--blockdev driver=qcow2,node-name=q,file=f \
	--nbd-server addr.type=unix,addr.path="$W/qsdb.sock" \
	--export type=nbd,id=e,node-name=q,name=,writable=on & P=$!
wait_sock "$W/qsdb.sock"
SERVER=qsd-qcow2-bitmap URI="nbd+unix:///?socket=$W/qsdb.sock" workloads
kill $P; wait $P 2>/dev/null || true

python3 "$HERE/report.py" "$W" voltrack voltrack-no-track nbdkit-file qsd-raw qsd-qcow2-bitmap
echo
"$HERE/tracking.sh" "$VOLTRACK"

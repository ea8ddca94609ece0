#!/bin/bash
# Side-by-side write-path benchmark: the same fio jobs, in one run, against
# voltrack and the servers users would otherwise pick.  Prints IOPS, p99
# latency and voltrack's ratio to each peer, its peak RSS, the cost of
# TLS (tls.sh) and the tracking figures of tracking.sh.
#
#   bench/run.sh [SIZE] [RUNTIME_SECONDS] [ROUNDS]     (defaults: 1G 5 3)
#
# VOLTRACK_BASELINE=/path/to/an/older/voltrack adds that build as one more
# server ("voltrack-baseline"), so a change's before and after are compared
# in the same run.  BENCH_ONLY=write-path stops after the fio table.
# BENCH_COLD=1 drops the page cache after each server starts, before its
# fio job (a real volume is much larger than memory); the table says so.
#
# Client and server share two noisy cores, so single runs swing by 20%.
# Servers therefore take turns, ROUNDS times and in a rotating order, each
# restarted on a fresh file, and the table shows medians.
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
SIZE=${1:-1G} RT=${2:-5} ROUNDS=${3:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
VOLTRACK=${VOLTRACK:-$HERE/../build/voltrack}
W=$(mktemp -d -t voltrack-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT

JOBS=("randw4k-qd32 randwrite 4k 32" "seqw1m-qd8 write 1m 8" "randr4k-qd32 randread 4k 32")
SERVERS=(voltrack voltrack-no-track nbdkit-file qsd-raw qsd-qcow2-bitmap)
BASELINE=${VOLTRACK_BASELINE:-}
[ -n "$BASELINE" ] && SERVERS+=(voltrack-baseline)

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

# Reads run on a volume full of data: on an empty one, qcow2 answers
# from its tables without reading, which measures nothing useful.
head -c "$SIZE" /dev/urandom >"$W/full.raw"
qemu-img convert -q -O qcow2 "$W/full.raw" "$W/full.qcow2"
qemu-img bitmap --add "$W/full.qcow2" b0

image() { # kind(raw|qcow2) destination full(0|1)
	if [ "$3" = 1 ]; then
		cp "$W/full.$1" "$2"
	elif [ "$1" = raw ]; then
		truncate -s "$SIZE" "$2"
	else
		qemu-img create -q -f qcow2 "$2" "$SIZE"
		qemu-img bitmap --add "$2" b0
	fi
}

start() { # server full -> sets PID and URI
	local d="$W/$1"
	rm -rf "$d"; mkdir -p "$d"
	case $1 in
	voltrack|voltrack-no-track|voltrack-baseline)
		image raw "$d/v.img" "$2"
		local bin=$VOLTRACK; [ "$1" = voltrack-baseline ] && bin=$BASELINE
		"$bin" init "$d/v.img" >/dev/null
		local extra=(); [ "$1" = voltrack-no-track ] && extra=(--no-track)
		"$bin" serve "$d/v.img" "${extra[@]}" 2>"$d/log" & PID=$!
		URI="nbd+unix:///?socket=$d/v.img.voltrack/nbd.sock"
		wait_sock "$d/v.img.voltrack/nbd.sock" ;;
	nbdkit-file)
		image raw "$d/raw.img" "$2"
		nbdkit --foreground --unix "$d/s" file "$d/raw.img" & PID=$!
		URI="nbd+unix:///?socket=$d/s"
		wait_sock "$d/s" ;;
	qsd-raw)
		image raw "$d/raw.img" "$2"
		qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$d/raw.img" \
			--nbd-server addr.type=unix,addr.path="$d/s" \
			--export type=nbd,id=e,node-name=f,name=,writable=on & PID=$!
		URI="nbd+unix:///?socket=$d/s"
		wait_sock "$d/s" ;;
	qsd-qcow2-bitmap)
		image qcow2 "$d/cbt.qcow2" "$2"
		qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$d/cbt.qcow2" \
			--blockdev driver=qcow2,node-name=q,file=f \
			--nbd-server addr.type=unix,addr.path="$d/s" \
			--export type=nbd,id=e,node-name=q,name=,writable=on & PID=$!
		URI="nbd+unix:///?socket=$d/s"
		wait_sock "$d/s" ;;
	esac
}

for round in $(seq "$ROUNDS"); do
	for j in "${JOBS[@]}"; do
		set -- $j
		full=0; [ "$2" = randread ] && full=1
		# Rotate the order each round: a server must not always follow
		# the same predecessor (whose dirty pages may still be going).
		n=${#SERVERS[@]}
		for k in $(seq 0 $((n - 1))); do
			server=${SERVERS[$(( (k + round) % n ))]}
			start "$server" "$full"
			if [ "${BENCH_COLD:-0}" = 1 ]; then
				sync; echo 1 >/proc/sys/vm/drop_caches
			fi
			fio --name="$1" --ioengine=nbd --uri="$URI" --rw="$2" --bs="$3" --iodepth="$4" \
			    --size="$SIZE" --time_based --runtime="$RT" --ramp_time=1 --numjobs=1 \
			    --output-format=json --output="$W/$server.$1.$round.json" >/dev/null \
			    2>"$W/$server.$1.err" || echo "$server $1 FAILED: $(tail -1 "$W/$server.$1.err")" >&2
			if [ "$server" = voltrack ]; then
				awk '/VmHWM/ {print $2}' "/proc/$PID/status" >>"$W/voltrack.rss"
			fi
			kill -TERM $PID; wait $PID 2>/dev/null || true
			rm -rf "$W/$server"
			sync
		done
	done
done

[ "${BENCH_COLD:-0}" = 1 ] && echo "cold page cache: dropped before each job"
python3 "$HERE/report.py" "$W" "$ROUNDS" "${SERVERS[@]}"
[ "${BENCH_ONLY:-}" = write-path ] && exit 0
echo
"$HERE/tls.sh" "$VOLTRACK" "$SIZE" "$RT" "$ROUNDS"
echo
"$HERE/tracking.sh" "$VOLTRACK"
echo
VOLTRACK="$VOLTRACK" /usr/bin/python3 "$HERE/snapshot.py"
echo
VOLTRACK="$VOLTRACK" "$HERE/backup.sh"

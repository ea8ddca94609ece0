#!/bin/bash
# Backup client figures (make bench runs this after the write path):
#   1. a full backup of a SIZE volume with 50% data (random, in 64 MiB
#      stripes), against nbdcopy of the same snapshot export to a file in
#      the same run: zstd off, zstd, zstd + AES-256-GCM;
#   2. an incremental backup after CHANGE_PCT% random change (64 KiB
#      writes) of a SPARSE volume: total time, and bytes read from the
#      server against the bytes voltrack reports changed; once per chunk
#      size in BACKUP_CHUNKS (default "4M 64K"), each its own repository;
#   3. restore into a voltrack export (NBD), against nbdcopy of the same
#      data from a file into another.
#
#   bench/backup.sh [SIZE] [SPARSE] [CHANGE_PCT]     (defaults: 4G 1T 1)
#
# A smoke run: bench/backup.sh 64M 4G 1
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
SIZE=${1:-4G} SPARSE=${2:-1T} PCT=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
VOLTRACK=${VOLTRACK:-$HERE/../build/voltrack}
W=$(mktemp -d -t voltrack-bench-backup.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

bytes() { numfmt --from=iec "$1"; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 2**20:.0f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

serve() { # volume -> sets PID
	"$VOLTRACK" serve "$1" 2>"$1.log" & PID=$!
	PIDS+=("$PID")
	for _ in $(seq 200); do grep -q serving "$1.log" 2>/dev/null && return 0; sleep 0.05; done
	echo "server on $1 did not start" >&2; cat "$1.log" >&2; return 1
}

# --- 1. full backup against nbdcopy ----------------------------------------
N=$(bytes "$SIZE")
STRIPE=$((64 << 20)); [ "$N" -lt $((4 * STRIPE)) ] && STRIPE=$((N / 4))
truncate -s "$N" "$W/full.img"
for ((off = 0; off < N; off += 2 * STRIPE)); do
	head -c "$STRIPE" /dev/urandom |
		dd of="$W/full.img" bs=1M seek="$off" conv=notrunc status=none oflag=seek_bytes
done
"$VOLTRACK" init "$W/full.img" >/dev/null
serve "$W/full.img"; FULL_PID=$PID
SOCK=$W/full.img.voltrack/nbd.sock
"$VOLTRACK" snapshot "$W/full.img" ref >/dev/null
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
nbdcopy "nbd+unix:///snapshot/ref?socket=$SOCK" "$W/copy.img"
t_copy=$(secs "$t0" "$(now)")
rm -f "$W/copy.img"
"$VOLTRACK" delete "$W/full.img" ref --forget >/dev/null
echo "full backup of $SIZE with 50% data (nbdcopy of the snapshot to a file: $t_copy s, $(rate "$N" "$t_copy") MiB/s)"
printf '%-28s %10s %10s %12s\n' "repository" "seconds" "MiB/s" "/ nbdcopy"
printf '%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$W/key"
for kind in none zstd zstd+aes; do
	args=(); case $kind in none) args=(--no-compress) ;; zstd+aes) args=(--key "$W/key") ;; esac
	sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	t0=$(now)
	"$VOLTRACK" backup "$W/full.img" "$W/repo-$kind" --full --quiet "${args[@]}" >/dev/null
	t=$(secs "$t0" "$(now)")
	printf '%-28s %10s %10s %12s\n' "$kind" "$t" "$(rate "$N" "$t")" "$(ratio "$t_copy" "$t")"
done

# --- 3. restore into a voltrack export against nbdcopy ------------------------
for how in restore nbdcopy; do
	"$VOLTRACK" init "$W/$how.img" --size "$N" >/dev/null
	serve "$W/$how.img"; pid=$PID
	uri="nbd+unix:///?socket=$W/$how.img.voltrack/nbd.sock"
	# Both read from the disk, as a restore does (a backup leaves no
	# chunk in the page cache: chunk.c).
	sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	t0=$(now)
	if [ "$how" = restore ]; then
		"$VOLTRACK" restore "$W/repo-zstd" latest "$uri" --quiet >/dev/null
	else
		nbdcopy "$W/full.img" "$uri"
	fi
	eval "t_$how=$(secs "$t0" "$(now)")"
	kill "$pid"; wait "$pid" 2>/dev/null || true
	rm -rf "$W/$how.img" "$W/$how.img.voltrack"
done
echo "restore into a voltrack export: $t_restore s ($(rate "$N" "$t_restore") MiB/s); nbdcopy from a file: $t_nbdcopy s; ratio $(ratio "$t_nbdcopy" "$t_restore")"
kill "$FULL_PID"; wait "$FULL_PID" 2>/dev/null || true
rm -rf "$W"/repo-* "$W/full.img" "$W/full.img.voltrack"

# --- 2. incremental after PCT% change of a sparse volume -----------------------
S=$(bytes "$SPARSE")
"$VOLTRACK" init "$W/sparse.img" --size "$S" >/dev/null
serve "$W/sparse.img"; SP_PID=$PID
uri="nbd+unix:///?socket=$W/sparse.img.voltrack/nbd.sock"
# One repository per chunk size, each with its full backup first; then
# one change, and an incremental into each.  With 4 MiB chunks a 64 KiB
# change makes a whole chunk to hash, compress and store; the smaller
# chunk shows what that costs.
CHUNKS=${BACKUP_CHUNKS:-4M 64K}
for cs in $CHUNKS; do
	"$VOLTRACK" backup "$W/sparse.img" "$W/repo-$cs" --chunk-size "$cs" --quiet >/dev/null
done
ckpt=$("$VOLTRACK" backups "$W/repo-${CHUNKS%% *}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["checkpoint"])')
fio --name=change --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --iodepth=32 \
    --size="$S" --io_size=$((S * PCT / 100)) --randrepeat=0 --output=/dev/null
changed=$("$VOLTRACK" changes "$W/sparse.img" --since "$ckpt" --json |
	python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin)["extents"]))')
echo "incremental after ${PCT}% random change (64 KiB writes) of a $SPARSE sparse volume, $changed bytes changed:"
printf '%-12s %10s %16s %10s %14s %s\n' "chunk size" "seconds" "bytes read" "/ changed" "bytes stored" "type"
for cs in $CHUNKS; do
	t0=$(now)
	out=$("$VOLTRACK" backup "$W/sparse.img" "$W/repo-$cs" --json --quiet)
	t=$(secs "$t0" "$(now)")
	read_b=$(field bytes_read <<<"$out")
	printf '%-12s %10s %16s %10s %14s %s\n' "$cs" "$t" "$read_b" "$(ratio "$read_b" "$changed")" \
		"$(field bytes_stored <<<"$out" 2>/dev/null || echo '?')" "$(field type <<<"$out")"
done

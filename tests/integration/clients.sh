#!/bin/bash
# Real NBD clients against a running server: qemu-io, nbdinfo, nbdcopy
# and fio.  Every result is compared with an independent reference: a
# file written with dd/head the same way, read back with cmp.
set -euo pipefail
export PATH=/usr/bin:$PATH
VOLTRACK=$(realpath "${VOLTRACK:-build/voltrack}")
ENGINE=${VOLTRACK_IO_ENGINE:-auto}
W=$(mktemp -d -t voltrack-clients.XXXXXX)
# fio leaves verify-state files in its working directory: keep them here.
cd "$W"
pass=0 fail=0
cleanup() { [ -n "${SRV:-}" ] && kill -9 "$SRV" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok; else bad "$what"; fi; }

start() { # volume
	"$VOLTRACK" serve "$1" --io-engine "$ENGINE" 2>>"$W/serve.log" &
	SRV=$!
	for _ in $(seq 200); do grep -q serving "$W/serve.log" 2>/dev/null && return; sleep 0.02; done
	echo "server did not start"; cat "$W/serve.log"; exit 1
}
stop() {
	kill -TERM "$SRV"; local st=0; wait "$SRV" || st=$?; SRV=
	check "server exits 0 on SIGTERM (got $st)" test "$st" -eq 0
}

VOL=$W/disk.img REF=$W/ref.img
SIZE=$((64 << 20))
"$VOLTRACK" init "$VOL" --size 64M >/dev/null
truncate -s $SIZE "$REF"
start "$VOL"
URI="nbd+unix:///?socket=$VOL.voltrack/nbd.sock"

# --- qemu-io: patterns, unaligned I/O, write-zeroes, discard ------------
qio() { qemu-io -f raw "$@" "$URI" >"$W/qio.out" 2>&1 || { cat "$W/qio.out"; return 1; }; }
# the same bytes into the reference, by other means
refpat() { # byte offset length
	head -c "$3" /dev/zero | tr '\0' "\\$(printf '%03o' "$1")" |
		dd of="$REF" bs=1 seek="$2" conv=notrunc status=none 2>/dev/null ||
	python3 -c "import sys;f=open('$REF','r+b');f.seek($2);f.write(bytes([$1])*$3)"
}
refzero() { dd if=/dev/zero of="$REF" bs=1 seek="$1" count="$2" conv=notrunc status=none; }

check "qemu-io aligned write" qio -c "write -P 0xa5 0 1M"
refpat 165 0 $((1 << 20))
check "qemu-io unaligned write" qio -c "write -P 0x3c 1000001 77777"
refpat 60 1000001 77777
check "qemu-io write at the last byte" qio -c "write -P 0x11 $((SIZE - 1)) 1"
refpat 17 $((SIZE - 1)) 1
check "qemu-io write-zeroes (may unmap)" qio -c "write -z -u 4096 65536"
refzero 4096 65536
check "qemu-io write-zeroes (no hole)" qio -c "write -z 200000 300000"
refzero 200000 300000
check "qemu-io write 8M then discard a middle" qio -c "write -P 0x77 8M 8M" -c "discard 9M 1M"
refpat 119 $((8 << 20)) $((8 << 20))
check "qemu-io pattern reads back" qio -c "read -P 0xa5 0 4096" -c "read -P 0x3c 1000001 77777" \
	-c "read -P 0 4096 65536" -c "read -P 0x11 $((SIZE - 1)) 1"
check "qemu-io read past the end fails" bash -c "qemu-io -f raw -c 'read $((SIZE - 512)) 1024' '$URI' 2>&1 | grep -q 'read failed'"
qio -c "flush"
# discard is advisory: the reference takes whatever the volume holds there
dd if="$VOL" of="$REF" bs=1M skip=9 seek=9 count=1 conv=notrunc status=none
check "backing file equals reference after qemu-io" cmp -s "$VOL" "$REF"

# --- nbdinfo ------------------------------------------------------------
check "nbdinfo --size" test "$(nbdinfo --size "$URI")" = "$SIZE"
check "nbdinfo --list names the live export" bash -c "nbdinfo --list --json '$URI' | grep -q '\"export-name\": \"\"'"
check "nbdinfo --can write" nbdinfo --can write "$URI"
check "nbdinfo --can multi-conn" nbdinfo --can multi-conn "$URI"
# --map against the filesystem's own view, read with SEEK_HOLE in Python
nbdinfo --map --totals "$URI" >"$W/totals"
python3 - "$VOL" "$W/totals" <<'PY' || bad "nbdinfo --map matches SEEK_DATA/SEEK_HOLE"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
data = off = 0
while off < size:
    try: d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE); data += h - d; off = h
got = {}
for line in open(sys.argv[2]):
    f = line.split()
    got[int(f[2])] = int(f[0])
assert got.get(0, 0) == data, (got, data)
assert got.get(3, 0) == size - data, (got, size - data)
PY
ok

# --- nbdcopy round trip --------------------------------------------------
head -c $SIZE /dev/urandom >"$W/random.img"
check "nbdcopy file -> server" nbdcopy "$W/random.img" "$URI"
check "backing file equals copied file" cmp -s "$VOL" "$W/random.img"
check "nbdcopy server -> file" nbdcopy "$URI" "$W/back.img"
check "copied back equals original" cmp -s "$W/back.img" "$W/random.img"
check "nbdcopy with 4 connections" nbdcopy --connections=4 --requests=16 "$URI" "$W/back4.img"
check "4-connection copy equals original" cmp -s "$W/back4.img" "$W/random.img"

# --- fio with verification -----------------------------------------------
check "fio randwrite+verify (qd32, mixed sizes)" \
	fio --name=v --ioengine=nbd --uri="$URI" --rw=randwrite --bsrange=512-64k \
	--iodepth=32 --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--output="$W/fio.txt"
# Two connections at once, each verifying its own half.
check "fio 2 jobs (2 connections), write+verify" \
	fio --name=v --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
	--iodepth=16 --size=16M --numjobs=2 --offset_increment=16M \
	--verify=md5 --verify_fatal=1 --output="$W/fio2.txt"
# Trim is advisory, so it may leave data; what it must not do is touch
# bytes outside its range.  Trim the first 16M, check the next 16M.
check "fio trim job" fio --name=t --ioengine=nbd --uri="$URI" --rw=trim --bs=1M \
	--iodepth=8 --size=16M --output="$W/fio3.txt"
check "fio verify-only pass of the untrimmed half" \
	fio --name=v --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
	--iodepth=16 --size=16M --offset=16M --verify=md5 --verify_only=1 \
	--output="$W/fio4.txt"
stop
check "no sanitizer or error reports in the log" bash -c "! grep -Eq 'ERROR|runtime error|error:' '$W/serve.log'"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

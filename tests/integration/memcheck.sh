#!/bin/bash
# One short `voltrack serve` session, and the offline commands, under
# valgrind's memcheck: uninitialised reads, invalid accesses and definite
# leaks that ASan cannot see.  The thread-pool engine is used, because
# valgrind cannot follow the kernel filling buffers through io_uring.
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
VOLTRACK=$(realpath "${VOLTRACK:-build/voltrack}")
if ! command -v valgrind >/dev/null; then
	echo "valgrind is not installed (scripts/deps.sh installs it); memcheck pass not run"
	exit 77
fi
W=$(mktemp -d -t voltrack-memcheck.XXXXXX)
cd "$W"
SRV=
cleanup() { [ -n "$SRV" ] && kill -9 "$SRV" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
pass=0 fail=0
check() { local what=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $what"; fi; }
VG=(valgrind -q --error-exitcode=97 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite)
clean_log() { ! grep -E '^==[0-9]+== ' "$1"; }

VOL=$W/disk.img
URI="nbd+unix:///?socket=$VOL.voltrack/nbd.sock"
check "init under memcheck" "${VG[@]}" "$VOLTRACK" init "$VOL" --size 64M >/dev/null 2>"$W/init.log"
check "init log is clean" clean_log "$W/init.log"

"${VG[@]}" "$VOLTRACK" serve "$VOL" --io-engine threads --persist-interval 100 2>"$W/serve.log" &
SRV=$!
for _ in $(seq 600); do grep -q serving "$W/serve.log" && break; sleep 0.1; done
check "server starts under memcheck" grep -q serving "$W/serve.log"

check "checkpoint" "$VOLTRACK" checkpoint "$VOL" c1 >/dev/null
check "qemu-io writes, zeroes, discards, flushes, reads" \
	qemu-io -f raw -c "write -P 0x5a 0 1M" -c "write -P 0x33 3000000 12345" \
	-c "write -z 8M 2M" -c "discard 16M 1M" -c "flush" -c "read -P 0x5a 0 1M" "$URI" \
	>"$W/qio.out"
check "changes since c1" bash -c "'$VOLTRACK' changes '$VOL' --since c1 --json | grep -q '\"offset\":0'"
check "nbdinfo --map of base:allocation and the dirty bitmap" \
	bash -c "nbdinfo --map '$URI' >/dev/null && nbdinfo --map=qemu:dirty-bitmap:c1 '$URI' >/dev/null"
check "status and list over the control socket" \
	bash -c "'$VOLTRACK' status '$VOL' >/dev/null && '$VOLTRACK' list '$VOL' --json >/dev/null"
kill -TERM "$SRV"
st=0; wait "$SRV" || st=$?; SRV=
check "server exits 0 under memcheck (97 means memcheck errors; got $st)" test "$st" -eq 0
check "serve log has no memcheck report" clean_log "$W/serve.log"

# A TLS session (PSK; the session layer is the same for X.509): the
# handshake thread's blocking phase, then the worker's memory transport.
if command -v psktool >/dev/null; then
	psktool -u alice -p "$W/keys.psk" >/dev/null 2>&1
	"${VG[@]}" "$VOLTRACK" serve "$VOL" --io-engine threads --tls-psk "$W/keys.psk" \
		2>"$W/serve-tls.log" &
	SRV=$!
	for _ in $(seq 600); do grep -q serving "$W/serve-tls.log" && break; sleep 0.1; done
	TLS_URI="nbds+unix://alice@/?socket=$VOL.voltrack/nbd.sock&tls-psk-file=$W/keys.psk"
	head -c 2M /dev/urandom >"$W/tls.ref"
	check "nbdcopy writes and reads back through TLS" bash -c \
		"nbdcopy '$W/tls.ref' '$TLS_URI' && nbdcopy '$TLS_URI' '$W/tls.back' &&
		 cmp -n 2097152 '$W/tls.ref' '$W/tls.back'"
	check "a plaintext client is refused" bash -c "! nbdinfo --size '$URI' 2>/dev/null"
	kill -TERM "$SRV"
	st=0; wait "$SRV" || st=$?; SRV=
	check "TLS server exits 0 under memcheck (got $st)" test "$st" -eq 0
	check "TLS serve log has no memcheck report" clean_log "$W/serve-tls.log"
fi

# Offline: recovery after a kill, then the commands on the metadata.
"${VG[@]}" "$VOLTRACK" serve "$VOL" --io-engine threads 2>"$W/serve2.log" &
SRV=$!
for _ in $(seq 600); do grep -q serving "$W/serve2.log" && break; sleep 0.1; done
qemu-io -f raw -c "write -P 0x77 20M 64k" "$URI" >/dev/null
kill -9 "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=
for cmd in "status $VOL" "changes $VOL --since c1" "checkpoint $VOL c2" "list $VOL" "check $VOL"; do
	# shellcheck disable=SC2086
	check "offline '$cmd' under memcheck" "${VG[@]}" "$VOLTRACK" $cmd >/dev/null 2>"$W/offline.log"
	check "offline '$cmd' log is clean" clean_log "$W/offline.log"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

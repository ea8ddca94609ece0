#!/bin/bash
# The cost of TLS on the write path: 4 KiB random and 1 MiB sequential
# writes through voltrack with --tls-creds, through plain voltrack, and
# through nbdkit's file plugin with --tls=require on the same
# credentials, in one run, servers taking turns.  Called by run.sh;
# prints medians and voltrack-tls's IOPS as a ratio of each other row.
#
#   bench/tls.sh [VOLTRACK] [SIZE] [RUNTIME_SECONDS] [ROUNDS]   (defaults: build/voltrack 1G 5 3)
#
# fio's nbd engine takes no credentials in its URI; libnbd then reads
# the CA from $HOME/.pki/libnbd, so fio runs with HOME in the scratch
# directory.  (Over a Unix socket libnbd does not check the server's
# certificate, but the session is encrypted all the same.)
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
VOLTRACK=${1:-build/voltrack} SIZE=${2:-1G} RT=${3:-5} ROUNDS=${4:-3}
W=$(mktemp -d -t voltrack-tls-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT

JOBS=("randw4k-qd32 randwrite 4k 32" "seqw1m-qd8 write 1m 8")
SERVERS=(voltrack-tls voltrack nbdkit-tls)

# Credentials: a CA and a server certificate, as the README's set-up makes them.
P=$W/pki
mkdir -p "$P" "$W/home/.pki/libnbd"
printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$W/ca.info"
printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$W/srv.info"
certtool --generate-privkey --outfile "$W/ca-key.pem" >/dev/null 2>&1
certtool --generate-self-signed --load-privkey "$W/ca-key.pem" --template "$W/ca.info" \
	--outfile "$P/ca-cert.pem" >/dev/null 2>&1
certtool --generate-privkey --outfile "$P/server-key.pem" >/dev/null 2>&1
certtool --generate-certificate --load-ca-certificate "$P/ca-cert.pem" \
	--load-ca-privkey "$W/ca-key.pem" --load-privkey "$P/server-key.pem" \
	--template "$W/srv.info" --outfile "$P/server-cert.pem" >/dev/null 2>&1
chmod 600 "$P/server-key.pem"
cp "$P/ca-cert.pem" "$W/home/.pki/libnbd/"

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

start() { # server -> sets PID and URI
	local d="$W/$1"
	rm -rf "$d"; mkdir -p "$d"
	truncate -s "$SIZE" "$d/v.img"
	case $1 in
	voltrack|voltrack-tls)
		"$VOLTRACK" init "$d/v.img" >/dev/null
		local extra=(); [ "$1" = voltrack-tls ] && extra=(--tls-creds "$P")
		"$VOLTRACK" serve "$d/v.img" "${extra[@]}" 2>"$d/log" & PID=$!
		URI="nbd+unix:///?socket=$d/v.img.voltrack/nbd.sock"
		[ "$1" = voltrack-tls ] && URI="nbds+unix:///?socket=$d/v.img.voltrack/nbd.sock"
		wait_sock "$d/v.img.voltrack/nbd.sock" ;;
	nbdkit-tls)
		nbdkit --foreground --unix "$d/s" --tls=require --tls-certificates="$P" \
			file "$d/v.img" & PID=$!
		URI="nbds+unix:///?socket=$d/s"
		wait_sock "$d/s" ;;
	esac
}

for round in $(seq "$ROUNDS"); do
	for j in "${JOBS[@]}"; do
		set -- $j
		n=${#SERVERS[@]}
		for k in $(seq 0 $((n - 1))); do
			server=${SERVERS[$(( (k + round) % n ))]}
			start "$server"
			HOME=$W/home fio --name="$1" --ioengine=nbd --uri="$URI" --rw="$2" --bs="$3" \
			    --iodepth="$4" --size="$SIZE" --time_based --runtime="$RT" --ramp_time=1 \
			    --numjobs=1 --output-format=json --output="$W/$server.$1.$round.json" \
			    >/dev/null 2>"$W/$server.$1.err" ||
				echo "$server $1 FAILED: $(tail -1 "$W/$server.$1.err")" >&2
			kill -TERM $PID; wait $PID 2>/dev/null || true
			rm -rf "${W:?}/$server"
			sync
		done
	done
done

python3 - "$W" "$ROUNDS" "${SERVERS[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, ours, *peers = sys.argv[1:]
def load(server, job):
    iops, p99 = [], []
    for r in range(1, int(rounds) + 1):
        try:
            text = open(os.path.join(work, f"{server}.{job}.{r}.json")).read()
            d = json.loads(text[text.index("{"):])["jobs"][0]["write"]
        except (OSError, ValueError, KeyError):
            continue
        iops.append(d["iops"])
        p99.append(d["clat_ns"]["percentile"]["99.000000"] / 1000)
    return (statistics.median(iops), statistics.median(p99)) if iops else None
print(f"TLS, medians of {rounds} interleaved rounds")
print(f"{'job':14s} {'server':14s} {'IOPS':>9s} {'p99 us':>9s}   voltrack-tls/row")
for job in ("randw4k-qd32", "seqw1m-qd8"):
    base = load(ours, job)
    for server in [ours] + peers:
        r = load(server, job)
        if not r:
            print(f"{job:14s} {server:14s} {'failed':>9s}")
            continue
        ratio = f"{base[0] / r[0]:.2f}" if base and server != ours else ""
        print(f"{job:14s} {server:14s} {r[0]:9.0f} {r[1]:9.1f}   {ratio}")
PY

#!/bin/bash
# Run one fuzz target, three ways (fuzz/README.md):
#
#   run.sh replay   EXE NAME   every seed and every kept crash input once
#   run.sh short    EXE NAME SECONDS
#                              a bounded run from the seeds, in a scratch
#                              corpus (nothing is written to the tree)
#   run.sh campaign EXE NAME SECONDS CORPUS
#                              a long run that keeps what it finds in CORPUS
#
# NAME is the target's name (nbd, superblock, ...): its seeds are in
# fuzz/seeds/NAME, the inputs of fixed crashes in fuzz/regress/NAME, its
# dictionary fuzz/nbd.dict or fuzz/meta.dict.  A crash leaves its input
# in ARTIFACTS (default: the current directory) and fails.
set -euo pipefail

mode=$1 exe=$2 name=$3
here=$(cd "$(dirname "$0")" && pwd)
seeds=$here/seeds/$name
regress=$here/regress/$name
dict=$here/meta.dict
[ "$name" = nbd ] && dict=$here/nbd.dict
artifacts=${ARTIFACTS:-$PWD}
mkdir -p "$artifacts"

dirs=("$seeds")
[ -d "$regress" ] && dirs+=("$regress")

# stderr of the target is the server's log: noise at this rate.
# libFuzzer keeps its own report (and the sanitizers') on a copy.
# libFuzzer's own exit code for a crash is 77, which meson reads as
# "skipped": a crash must fail.
common=(-close_fd_mask=2 -artifact_prefix="$artifacts/$name-" -timeout=60
	-error_exitcode=1 -timeout_exitcode=1
	-rss_limit_mb=3072 -dict="$dict" -print_final_stats=1)

scratch=
cleanup() { [ -n "$scratch" ] && rm -rf "$scratch"; return 0; }
trap cleanup EXIT

case $mode in
replay)
	n=$(find "${dirs[@]}" -type f | wc -l)
	echo "replaying $n inputs of fuzz_$name"
	"$exe" "${common[@]}" -runs=0 "${dirs[@]}"
	;;
short)
	scratch=$(mktemp -d)
	"$exe" "${common[@]}" -max_total_time="$4" "$scratch" "${dirs[@]}"
	;;
campaign)
	mkdir -p "$5"
	"$exe" "${common[@]}" -max_total_time="$4" "$5" "${dirs[@]}"
	;;
*)
	echo "usage: $0 replay|short|campaign EXE NAME [SECONDS [CORPUS]]" >&2
	exit 2
	;;
esac

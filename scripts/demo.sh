#!/bin/bash
# make demo: a 1 GiB demo volume, served in the foreground, with the
# commands to try against it.  Ctrl-C stops the server cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
VOLTRACK=$PWD/build/voltrack
DEMO=$PWD/demo
VOL=$DEMO/disk.img
SOCK=$VOL.voltrack/nbd.sock
URI="nbd+unix:///?socket=$SOCK"

mkdir -p "$DEMO"
if [ ! -e "$VOL.voltrack/superblock" ]; then
	rm -f "$VOL"
	"$VOLTRACK" init "$VOL" --size 1G
fi

cat <<MSG

voltrack is serving $VOL.  In another terminal, try:

  nbdinfo '$URI'
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '$URI'
  nbdinfo --map '$URI'
  nbdcopy '$URI' /tmp/demo-copy.img && cmp /tmp/demo-copy.img '$VOL'
  fio --name=demo --ioengine=nbd --uri='$URI' --rw=randwrite --bs=4k \\
      --iodepth=32 --size=256M --runtime=10 --time_based

Press Ctrl-C here to stop the server.

MSG
exec "$VOLTRACK" serve "$VOL"

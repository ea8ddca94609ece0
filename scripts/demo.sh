#!/bin/bash
# make demo: first a short tour on a scratch volume that runs the whole
# story and shows each command with its output (write, checkpoint,
# write, snapshot, write, copy the snapshot, ask what changed, delete;
# then a full and an incremental backup, and a restore that matches);
# then the 1 GiB demo volume, served in the foreground, with the same
# commands to try against it, and how to put a file system on it.
# Ctrl-C stops the server cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VOLTRACK=$ROOT/build/voltrack
DEMO=demo
VOL=$DEMO/disk.img
SOCK=$VOL.voltrack/nbd.sock

# --- the tour ----------------------------------------------------------------

TOUR=$DEMO/tour
tour_pid=
end_tour() {
	if [ -n "$tour_pid" ]; then
		kill "$tour_pid" 2>/dev/null || true
		wait "$tour_pid" 2>/dev/null || true
		tour_pid=
	fi
	rm -rf "${ROOT:?}/${TOUR:?}"
}
trap end_tour EXIT

# Print a command as typed, then run it.
show() {
	printf '\n$ %s\n' "$*"
	sh -c "$*"
}

tour() {
	rm -rf "$TOUR"
	mkdir -p "$TOUR"
	cd "$TOUR"
	PATH=$ROOT/build:$PATH
	voltrack init disk.img --size 256M >/dev/null
	voltrack serve disk.img 2>serve.log &
	tour_pid=$!
	for _ in $(seq 100); do
		grep -q serving serve.log && break
		kill -0 "$tour_pid" 2>/dev/null || { cat serve.log; exit 1; }
		sleep 0.1
	done
	grep -q serving serve.log || { cat serve.log; exit 1; }

	local uri='nbd+unix:///?socket=disk.img.voltrack/nbd.sock'
	local snap='nbd+unix:///snapshot/tuesday?socket=disk.img.voltrack/nbd.sock'
	cat <<MSG
A tour on a scratch volume (demo/tour/disk.img, 256 MiB), served by
'voltrack serve disk.img'.  The live volume is NBD export "":
  URI='$uri'
MSG
	export URI=$uri SNAP=$snap

	echo
	echo "# Monday: a full backup is taken, then a checkpoint marks its instant."
	show "qemu-io -f raw -c 'write -P 1 0 64M' \"\$URI\""
	show "voltrack checkpoint disk.img monday"
	echo
	echo "# Tuesday's writes, then a snapshot: the volume as it is now, kept"
	echo "# read-only as export snapshot/tuesday, plus checkpoint tuesday."
	show "qemu-io -f raw -c 'write -P 2 1M 64k' -c 'write -P 3 100M 128k' \"\$URI\""
	show "voltrack snapshot disk.img tuesday"
	echo
	echo "# The volume goes on changing; the snapshot does not."
	show "qemu-io -f raw -c 'write -P 4 1M 1M' \"\$URI\""
	show "nbdcopy \"\$SNAP\" tuesday.img"
	show "qemu-io -f raw -r -c 'read -P 2 1M 64k' tuesday.img"
	show "qemu-io -f raw -r -c 'read -P 4 1M 64k' \"\$URI\""
	echo
	echo "# What changed between Monday's backup and the snapshot: exactly what"
	echo "# an incremental backup reads from it.  (The live export also shows"
	echo "# the write made after the snapshot.)"
	show "nbdinfo --map=qemu:dirty-bitmap:monday \"\$SNAP\""
	show "nbdinfo --map=qemu:dirty-bitmap:monday \"\$URI\""
	echo
	echo "# Once backed up, the snapshot goes; its checkpoint stays, for the"
	echo "# next incremental backup."
	show "voltrack list disk.img"
	show "voltrack delete disk.img tuesday"
	show "voltrack list disk.img"
	echo
	echo "# Backups: voltrack backup drives all of the above itself.  The first"
	echo "# is full; it leaves one checkpoint of its own (vtbackup-...)."
	show "voltrack backup disk.img repo"
	echo
	echo "# More writes, then an incremental backup: only the changed chunks are"
	echo "# read (the dirty blocks of each), and the backup is still logically full."
	show "qemu-io -f raw -c 'write -P 5 10M 256k' -c 'write -P 6 200M 4k' \"\$URI\""
	show "nbdcopy \"\$URI\" volume-now.img          # our own copy, to compare with"
	show "voltrack backup disk.img repo"
	show "voltrack backups repo"
	echo
	echo "# Restore the incremental and check it against the copy."
	show "voltrack restore repo latest restored.img --verify"
	show "cmp restored.img volume-now.img && echo 'restored.img matches the volume'"
	show "voltrack verify repo"
	cd "$ROOT"
	end_tour
}

mkdir -p "$DEMO"
tour

# --- the demo volume -----------------------------------------------------------

if [ ! -e "$VOL.voltrack/superblock" ]; then
	rm -f "$VOL"
	"$VOLTRACK" init "$VOL" --size 1G >/dev/null
fi

cat <<MSG

----------------------------------------------------------------------------
Now voltrack serves $VOL (1 GiB).  In another terminal, try the same:

  cd $ROOT
  URI='nbd+unix:///?socket=$SOCK'
  SNAP='nbd+unix:///snapshot/tuesday?socket=$SOCK'

  qemu-io -f raw -c 'write -P 1 0 64M' "\$URI"
  build/voltrack checkpoint $VOL monday
  qemu-io -f raw -c 'write -P 2 1M 64k' -c 'write -P 3 500M 128k' "\$URI"
  build/voltrack snapshot $VOL tuesday
  qemu-io -f raw -c 'write -P 4 1M 1M' "\$URI"
  nbdcopy "\$SNAP" /tmp/tuesday.img
  nbdinfo --map=qemu:dirty-bitmap:monday "\$SNAP"
  build/voltrack delete $VOL tuesday

  nbdinfo "\$URI"; nbdinfo --map "\$URI"; build/voltrack status $VOL
  fio --name=demo --ioengine=nbd --uri="\$URI" --rw=randwrite --bs=4k \\
      --iodepth=32 --size=256M --runtime=10 --time_based

A file system on it (as root): nbdfuse shows the export as a file, a loop
device makes it a disk, and the snapshot freezes the file system around
its instant, so the snapshot is a clean file system, not a crashed one:

  D=\$(mktemp -d); mkdir \$D/fuse \$D/fs \$D/snap
  nbdfuse -P \$D/pid \$D/fuse/nbd "\$URI" & until [ -e \$D/pid ]; do sleep 0.1; done
  DEV=\$(losetup -f --show \$D/fuse/nbd)
  mkfs.ext4 -q \$DEV && mount \$DEV \$D/fs && cp -r /etc \$D/fs/
  build/voltrack snapshot $VOL fs --freeze-cmd "fsfreeze -f \$D/fs" \\
      --thaw-cmd "fsfreeze -u \$D/fs"
  rm -r \$D/fs/etc                   # gone from the volume, not from the snapshot
  nbdcopy 'nbd+unix:///snapshot/fs?socket=$SOCK' \$D/fs.img
  e2fsck -fn \$D/fs.img && mount -o ro,loop \$D/fs.img \$D/snap && ls \$D/snap/etc | head -3
  umount \$D/snap \$D/fs; losetup -d \$DEV; umount \$D/fuse; rm -r \$D

$VOL keeps its checkpoints between runs of make demo; rm -rf $DEMO
starts afresh.  doc/snapshots.md explains the hold and copy-on-write.
Press Ctrl-C here to stop the server.

MSG
trap - EXIT
exec "$VOLTRACK" serve "$VOL"

#!/bin/sh
# Install the Debian packages voltrack builds and tests with.  As root it
# installs what is missing; otherwise it prints the command to run.
# clang and libFuzzer build the fuzz targets (fuzz/), whose corpora
# `make check` replays; libclang-rt-14-dev (only recommended by clang,
# and recommends are not installed here) holds the sanitizer and
# -fsanitize=fuzzer runtimes clang links.
set -eu

# mount (losetup, mount) and e2fsprogs (mkfs.ext4, e2fsck) are part of a
# standard install but not essential; the file-system test and the demo's
# file-system walk-through need them. GnuTLS is the NBD server's TLS;
# gnutls-bin has certtool and psktool, which the TLS test makes its
# credentials with.  libnbd-dev, libzstd-dev and libgnutls28-dev build
# the backup client (backup/).  As root, nbdfuse mounts through
# libfuse3 without fuse3's fusermount3, and umount ends it.
PACKAGES="gcc meson ninja-build pkg-config liburing-dev libcmocka-dev libgnutls28-dev gnutls-bin \
qemu-utils qemu-system-common nbdkit libnbd-bin libnbd-dev python3-libnbd fio valgrind \
libzstd-dev zstd \
mount e2fsprogs clang libfuzzer-14-dev libclang-rt-14-dev"

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "voltrack needs these packages; run as root:" >&2
	echo "  apt-get install -y$missing" >&2
	exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null

# Thin wrapper around Meson so that the usual commands work.
#   make          build build/voltrack
#   make check    every test: plain build, then ASan+UBSan, then TSan
#   make demo     build, create a demo volume, serve it
#   make torture  1000 kill -9 crash trials
#   make bench    voltrack against nbdkit and qemu-storage-daemon

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
MESON      ?= meson

.PHONY: all check check-fast torture bench demo deps clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	$(MESON) setup $(BUILD)

$(BUILD_ASAN)/build.ninja:
	$(MESON) setup $(BUILD_ASAN) -Db_sanitize=address,undefined -Db_lundef=false

$(BUILD_TSAN)/build.ninja:
	$(MESON) setup $(BUILD_TSAN) -Db_sanitize=thread -Db_lundef=false

deps:
	scripts/deps.sh

# The full suite, three times: as shipped (and its unit tests again under
# valgrind's memcheck), under ASan+UBSan, and the threaded parts under TSan.
check: deps all $(BUILD_ASAN)/build.ninja $(BUILD_TSAN)/build.ninja
	$(MESON) test -C $(BUILD) --print-errorlogs --no-suite memcheck
	$(MESON) test -C $(BUILD) --print-errorlogs --setup memcheck --suite memcheck
	ninja -C $(BUILD_ASAN)
	$(MESON) test -C $(BUILD_ASAN) --print-errorlogs --no-suite memcheck
	ninja -C $(BUILD_TSAN)
	$(MESON) test -C $(BUILD_TSAN) --print-errorlogs --suite threads

# Just the plain build, for a quick edit-test loop.
check-fast: all
	$(MESON) test -C $(BUILD) --print-errorlogs --no-suite memcheck

# Long crash runs: 1000 kill -9 trials (about an hour).
torture: all
	VOLTRACK=$(BUILD)/voltrack VOLTRACK_CRASH_TRIALS=$${TRIALS:-1000} PATH=/usr/bin:$$PATH \
		tests/integration/crash.py

bench: deps all
	bench/run.sh

demo: deps all
	scripts/demo.sh

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN)

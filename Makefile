# Thin wrapper around Meson so that the usual commands work.
#   make          build build/voltrack
#   make check    every test: plain build, then ASan+UBSan, then TSan
#   make demo     build, create a demo volume, serve it
#   make torture  1000 kill -9 crash trials
#   make soak     64 mixed clients for SOAK_SECONDS (default 600)
#   make bench    voltrack against nbdkit and qemu-storage-daemon
#   make fuzz     every libFuzzer target for FUZZ_SECONDS each (clang)

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
BUILD_FUZZ ?= build-fuzz
MESON      ?= meson
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= nbd superblock changemap intent checkpoints

.PHONY: all check check-fast check-fuzz fuzz need-clang torture soak bench demo deps clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	$(MESON) setup $(BUILD)

$(BUILD_ASAN)/build.ninja:
	$(MESON) setup $(BUILD_ASAN) -Db_sanitize=address,undefined -Db_lundef=false

$(BUILD_TSAN)/build.ninja:
	$(MESON) setup $(BUILD_TSAN) -Db_sanitize=thread -Db_lundef=false

# The fuzz targets need clang and libFuzzer; without them `make check`
# fails here rather than skipping the fuzz regression tests.
need-clang:
	@command -v clang >/dev/null 2>&1 || { \
		echo "make: clang is not installed: the fuzz targets (fuzz/) need clang and" \
		     "libFuzzer; run scripts/deps.sh as root (it installs clang libfuzzer-14-dev libclang-rt-14-dev)" >&2; \
		exit 1; }

$(BUILD_FUZZ)/build.ninja: | need-clang
	CC=clang $(MESON) setup $(BUILD_FUZZ) -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false

deps:
	scripts/deps.sh

# The full suite, three times: as shipped (and its unit tests again under
# valgrind's memcheck), under ASan+UBSan, and the threaded parts under TSan;
# then the fuzz targets replay their corpora and fuzz for about a minute.
check: deps all $(BUILD_ASAN)/build.ninja $(BUILD_TSAN)/build.ninja need-clang $(BUILD_FUZZ)/build.ninja
	$(MESON) test -C $(BUILD) --print-errorlogs --no-suite memcheck
	$(MESON) test -C $(BUILD) --print-errorlogs --setup memcheck --suite memcheck
	ninja -C $(BUILD_ASAN)
	$(MESON) test -C $(BUILD_ASAN) --print-errorlogs --no-suite memcheck --no-suite plain-only
	ninja -C $(BUILD_TSAN)
	$(MESON) test -C $(BUILD_TSAN) --print-errorlogs --suite threads
	$(MAKE) check-fuzz

# Replay every seed and kept crash input, then a short bounded run of each.
check-fuzz: need-clang $(BUILD_FUZZ)/build.ninja
	ninja -C $(BUILD_FUZZ)
	$(MESON) test -C $(BUILD_FUZZ) --print-errorlogs --suite fuzz

# Fuzz each target in turn for FUZZ_SECONDS (default 300), keeping what
# is found in $(BUILD_FUZZ)/corpus/TARGET; crash inputs land in
# $(BUILD_FUZZ)/artifacts.  FUZZ_TARGETS picks the targets.
fuzz: need-clang $(BUILD_FUZZ)/build.ninja
	ninja -C $(BUILD_FUZZ)
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
		ARTIFACTS=$(BUILD_FUZZ)/artifacts fuzz/run.sh campaign $(BUILD_FUZZ)/fuzz/fuzz_$$t $$t \
			$(FUZZ_SECONDS) $(BUILD_FUZZ)/corpus/$$t || exit 1; \
	done

# Just the plain build, for a quick edit-test loop.
check-fast: all
	$(MESON) test -C $(BUILD) --print-errorlogs --no-suite memcheck

# Long crash runs: 1000 kill -9 trials (about an hour).
torture: all
	VOLTRACK=$(BUILD)/voltrack VOLTRACK_CRASH_TRIALS=$${TRIALS:-1000} PATH=/usr/bin:$$PATH \
		tests/integration/crash.py

# 64 connections from mixed clients, checked against the test's own
# reference (tests/integration/soak.py); `make check` runs 25 s of it.
soak: all
	VOLTRACK=$(BUILD)/voltrack VOLTRACK_SOAK_SECONDS=$${SOAK_SECONDS:-600} PATH=/usr/bin:$$PATH \
		tests/integration/soak.py

bench: deps all
	bench/run.sh

demo: deps all
	scripts/demo.sh

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN) $(BUILD_FUZZ)

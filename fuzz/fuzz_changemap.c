/*
 * fuzz_changemap: arbitrary META/changemap contents against the library's
 * readers, with the oracle of metaharness.h (input format there).
 */
#include "fixture.h"
#include "metaharness.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	meta_harness_init();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	meta_harness_run(META_CHANGEMAP, data, size);
	return 0;
}

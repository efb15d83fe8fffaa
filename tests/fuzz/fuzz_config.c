/* libFuzzer harness for the config.json parser: any bytes either parse into
 * a config or fail with a message; never a crash or a leak. */
#include <stddef.h>
#include <stdint.h>

#include "hf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hf_config c;
    hf_config_parse((const char *)data, size, "fuzz/config.json", &c);
    hf_config_deinit(&c);
    return 0;
}

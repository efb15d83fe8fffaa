/* libFuzzer harness for the tokenizer_config.json parser: any bytes either
 * parse into a config or fail with a message naming the file; never a crash
 * or a leak. A parsed config's strings are NUL-terminated UTF-8. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "tokenizer_config.h"
#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_utf8(const char *s)
{
    if (s && lm_utf8_valid_prefix((const unsigned char *)s, strlen(s)) != strlen(s))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tokenizer_config c;
    int rc = tokenizer_config_parse((const char *)data, size, "fuzz/tokenizer_config.json", &c);
    if (rc == 0) {
        check_utf8(c.chat_template);
        check_utf8(c.bos_token);
        check_utf8(c.eos_token);
    } else if (!strstr(lm_last_error(), "fuzz/tokenizer_config.json")) {
        abort();
    }
    tokenizer_config_deinit(&c);
    return 0;
}

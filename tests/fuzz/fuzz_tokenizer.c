/* libFuzzer harness for tokenizer.json: the bytes either load (and then a
 * fixed text, special tokens included, is encoded and decoded) or fail with
 * a message; never a crash or a leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tok *t = tok_load_buffer((const char *)data, size, "fuzz/tokenizer.json");
    if (!t)
        return 0;
    static const char text[] = "Hello, wörld! 12345 <|im_end|>\n\tx";
    struct tok_ids ids = { 0 };
    if (tok_encode(t, text, sizeof(text) - 1, true, &ids) == 0) {
        char *out = NULL;
        size_t len = 0;
        if (tok_decode(t, ids.data, ids.n, false, &out, &len) == 0)
            free(out);
    }
    tok_ids_free(&ids);
    tok_free(t);
    return 0;
}

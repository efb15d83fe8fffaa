/* libFuzzer harness for the JSONL readers: calibration files
 * ({"prompt", "response"}) and benchmark files ({"question", "answer"}).
 * Arbitrary bytes are written to a scratch file and read by both; when a
 * reader accepts them, its promises are checked: at least one entry, every
 * string present (and, for calibration, non-empty), and reading the same
 * bytes twice gives the same content hash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "calib_file.h"
#include "lm_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_jsonl: %s (%s)\n", what, lm_last_error());
        abort();
    }
}

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!path[0])
        snprintf(path, sizeof(path), "/tmp/ms-fuzz-jsonl-%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    struct calib_file c;
    if (calib_file_load(path, &c) == 0) {
        check(c.n >= 1, "accepted calibration file without samples");
        for (size_t i = 0; i < c.n; i++)
            check(c.samples[i].prompt && c.samples[i].prompt[0] && c.samples[i].response &&
                  c.samples[i].response[0], "empty prompt or response accepted");
        struct calib_file again;
        check(calib_file_load(path, &again) == 0 && again.n == c.n &&
              again.content_hash == c.content_hash, "second read differs");
        calib_file_deinit(&again);
        calib_file_deinit(&c);
    } else {
        check(lm_last_error()[0] != '\0', "rejected without a message");
    }

    struct eval_bench b;
    if (eval_bench_load(path, &b) == 0) {
        check(b.n >= 1, "accepted benchmark without problems");
        for (size_t i = 0; i < b.n; i++)
            check(b.items[i].question && b.items[i].answer, "missing question or answer");
        eval_bench_deinit(&b);
    } else {
        check(lm_last_error()[0] != '\0', "rejected without a message");
    }
    unlink(path);
    return 0;
}

/* lm_parse_size, the one size parser of the command line, recipes and the
 * mergekit export: every unit, fractions, spaces, the largest sizes that fit
 * and the first that do not, and malformed text rejected with a message that
 * quotes it. */
#include "units.h"

#include <stdio.h>
#include <string.h>

#include "lm_error.h"
#include "test.h"

int main(void)
{
    static const struct { const char *text; uint64_t value; } good[] = {
        { "5GB", 5000000000ull }, { "500MB", 500000000ull }, { "2GiB", 2147483648ull },
        { "500mb", 500000000ull }, { "1000000", 1000000ull }, { "1kb", 1000ull },
        { "3KiB", 3072ull }, { "7mib", 7340032ull }, { "2TB", 2000000000000ull },
        { "1TiB", 1099511627776ull }, { "5G", 5000000000ull }, { "2Gi", 2147483648ull },
        { "64B", 64ull }, { "0", 0ull }, { "10 MB", 10000000ull }, { "5 GB", 5000000000ull },
        { "1.5GB", 1500000000ull }, { "1.5MB", 1500000ull }, { "1.5GiB", 1610612736ull },
        { "1.5KiB", 1536ull }, { "0.5", 0ull }, { "2.75k", 2750ull },
        { "18446744073709551615", UINT64_MAX }, { "16777215TiB", 16777215ull << 40 },
    };
    for (size_t i = 0; i < LM_ARRAY_SIZE(good); i++) {
        uint64_t v = 12345;
        char d[96];
        snprintf(d, sizeof(d), "\"%s\" is %llu bytes", good[i].text, (unsigned long long)good[i].value);
        TEST_COND(d, lm_parse_size(good[i].text, &v) == 0 && v == good[i].value);
    }
    static const char *bad[] = {
        "", "GB", "abc", "-5GB", "+5GB", "5XB", "5GBx", "5 G B", "1.GB", ".5GB", "0x10", "-1",
        "18446744073709551616", "20000000TB", "16777216TiB",
    };
    for (size_t i = 0; i < LM_ARRAY_SIZE(bad); i++) {
        uint64_t v = 777;
        char d[96];
        snprintf(d, sizeof(d), "\"%s\" is rejected, quoted in the message, output untouched", bad[i]);
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "'%s'", bad[i]);
        TEST_COND(d, lm_parse_size(bad[i], &v) == LM_EINVAL && strstr(lm_last_error(), "bad size") &&
                     strstr(lm_last_error(), quoted) && v == 777);
    }
    uint64_t v = 0;
    TEST_COND("no text is LM_EINVAL", lm_parse_size(NULL, &v) == LM_EINVAL);
    return test_report();
}

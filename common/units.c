#include "units.h"

#include <math.h>
#include <stddef.h>
#include <strings.h>

#include "lm_error.h"

int lm_parse_size(const char *text, uint64_t *bytes)
{
    static const struct { const char *unit; uint64_t mult; } units[] = {
        { "", 1 }, { "b", 1 },
        { "k", 1000ull }, { "kb", 1000ull }, { "ki", 1ull << 10 }, { "kib", 1ull << 10 },
        { "m", 1000000ull }, { "mb", 1000000ull }, { "mi", 1ull << 20 }, { "mib", 1ull << 20 },
        { "g", 1000000000ull }, { "gb", 1000000000ull }, { "gi", 1ull << 30 }, { "gib", 1ull << 30 },
        { "t", 1000000000000ull }, { "tb", 1000000000000ull }, { "ti", 1ull << 40 }, { "tib", 1ull << 40 },
    };
    if (!text || !bytes)
        return lm_err(LM_EINVAL, "bad size: none given");
    const char *p = text;
    if (*p < '0' || *p > '9')
        return lm_err(LM_EINVAL, "bad size '%s': expected a number such as 5GB, 500MB, 1.5GiB", text);
    uint64_t whole = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (whole > (UINT64_MAX - digit) / 10)
            return lm_err(LM_EINVAL, "bad size '%s': too large", text);
        whole = whole * 10 + digit;
    }
    double frac = 0.0;
    if (*p == '.') {
        p++;
        double scale = 0.1;
        if (*p < '0' || *p > '9')
            return lm_err(LM_EINVAL, "bad size '%s': a digit must follow the decimal point", text);
        for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    }
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < LM_ARRAY_SIZE(units); i++) {
        if (strcasecmp(p, units[i].unit) != 0)
            continue;
        const uint64_t mult = units[i].mult;
        if (whole > UINT64_MAX / mult)
            return lm_err(LM_EINVAL, "bad size '%s': too large", text);
        const uint64_t part = (uint64_t)floor(frac * (double)mult);
        if (whole * mult > UINT64_MAX - part)
            return lm_err(LM_EINVAL, "bad size '%s': too large", text);
        *bytes = whole * mult + part;
        return 0;
    }
    return lm_err(LM_EINVAL, "bad size '%s': unknown unit '%s' (use KB, MB, GB, TB or KiB, MiB, GiB, TiB)",
                  text, p);
}

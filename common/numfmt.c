/* Shortest round-trip number text; see numfmt.h. */
#include "numfmt.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* printf and strtod follow LC_NUMERIC; the text we write does not. */
static void to_c_locale(char *buf)
{
    for (char *p = buf; *p; p++)
        if (*p == ',')
            *p = '.';
}

/* strtod of text written with '.', whatever the locale says. */
static double read_back(const char *text)
{
    char local[LM_NUMBER_MAX + 8];
    snprintf(local, sizeof(local), "%s", text);
    struct lconv *lc = localeconv();
    if (lc && lc->decimal_point && lc->decimal_point[0] && strcmp(lc->decimal_point, ".") != 0) {
        char *dot = strchr(local, '.');
        if (dot)
            *dot = lc->decimal_point[0];
    }
    return strtod(local, NULL);
}

void lm_format_number(double v, char *buf, size_t size)
{
    if (!buf || size == 0)
        return;
    if (!isfinite(v)) {
        snprintf(buf, size, "%s", isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[LM_NUMBER_MAX + 8];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        to_c_locale(tmp);
        if (prec == 17 || read_back(tmp) == v)
            break;
    }
    /* %g writes 540 as "5.4e+02" when two digits suffice; below 1e16 the
     * same digits read better without the exponent ("540"). */
    char *e = strchr(tmp, 'e');
    int exp10 = e ? atoi(e + 1) : 0;
    if (e && exp10 >= 0 && exp10 < 16)
        snprintf(tmp, sizeof(tmp), "%.*f", prec - 1 - exp10 > 0 ? prec - 1 - exp10 : 0, v);
    to_c_locale(tmp);
    snprintf(buf, size, "%s", tmp);
}

double lm_round_decimals(double v, int decimals)
{
    if (!isfinite(v))
        return v;
    decimals = decimals < 0 ? 0 : decimals > 15 ? 15 : decimals;
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%.*f", decimals, v);
    to_c_locale(tmp);
    double r = read_back(tmp);
    return r == 0 ? 0.0 : r;   /* never "-0" from rounding a small negative */
}

int lm_decimals_of(double step)
{
    char tmp[LM_NUMBER_MAX];
    lm_format_number(fabs(step), tmp, sizeof(tmp));
    const char *e = strchr(tmp, 'e');
    const char *dot = strchr(tmp, '.');
    int frac = 0;
    if (dot)
        frac = (int)((e ? e : tmp + strlen(tmp)) - dot - 1);
    if (e)
        frac -= atoi(e + 1);
    return frac < 0 ? 0 : frac > 15 ? 15 : frac;
}

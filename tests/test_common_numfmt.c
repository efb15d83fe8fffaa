/* lm_format_number, the one number formatter of screens, recipes and the
 * mergekit YAML: exact strings for the numbers people type and for the
 * float errors that stepping used to leave, the round trip on awkward
 * doubles, and the decimal grid the tuning keys snap to. */
#include "numfmt.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "test.h"

static void expect(double v, const char *want)
{
    char buf[LM_NUMBER_MAX], d[128];
    lm_format_number(v, buf, sizeof(buf));
    snprintf(d, sizeof(d), "%.17g prints as \"%s\"", v, want);
    TEST_COND(d, strcmp(buf, want) == 0);
    if (strcmp(buf, want) != 0)
        printf("      got \"%s\"\n", buf);
}

static void test_strings(void)
{
    expect(0.6, "0.6");
    expect(0.1, "0.1");
    expect(0.4 + 0.05 * 4, "0.6000000000000001");   /* a different double: it must say so */
    expect(0.1 + 0.2, "0.30000000000000004");
    expect(42.0, "42");
    expect(1.0, "1");
    expect(-2.5, "-2.5");
    expect(1e-9, "1e-09");
    expect(1.0 / 3.0, "0.3333333333333333");
    expect(5e-324, "5e-324");
    expect(1e300, "1e+300");
    expect(-0.0, "-0");
    expect(123456789.0, "123456789");
    expect(0.05, "0.05");
    expect(540.0, "540");
    expect(60.0, "60");
    expect(1e15, "1000000000000000");
    expect(1e16, "1e+16");
    expect(1234.5, "1234.5");
    expect(0.0001, "0.0001");
    expect(NAN, "nan");
    expect(INFINITY, "inf");
    expect(-INFINITY, "-inf");
}

static void test_round_trip(void)
{
    const double values[] = { 0.1, 0.7, 2.0 / 3.0, 1e-7, 123.456, 9007199254740993.0, 1.7976931348623157e308,
                              2.2250738585072014e-308, 0.1 + 0.7, 3.14159265358979 };
    int ok = 1;
    for (size_t i = 0; i < LM_ARRAY_SIZE(values); i++) {
        char buf[LM_NUMBER_MAX];
        lm_format_number(values[i], buf, sizeof(buf));
        if (strtod(buf, NULL) != values[i]) {
            printf("      %.17g -> \"%s\" does not read back\n", values[i], buf);
            ok = 0;
        }
    }
    TEST_COND("every text reads back to the same double", ok);
    char small[4];
    lm_format_number(0.123456, small, sizeof(small));
    TEST_COND("a short buffer truncates and stays terminated", strcmp(small, "0.1") == 0);
}

static void test_decimal_grid(void)
{
    TEST_COND("0.05 has 2 decimals", lm_decimals_of(0.05) == 2);
    TEST_COND("0.1 has 1 decimal", lm_decimals_of(0.1) == 1);
    TEST_COND("1 has none", lm_decimals_of(1.0) == 0);
    TEST_COND("1e-3 has 3", lm_decimals_of(1e-3) == 3);
    TEST_COND("2.5e-4 has 5", lm_decimals_of(2.5e-4) == 5);
    double v = 0.4;
    for (int i = 0; i < 4; i++)
        v = lm_round_decimals(v + 0.05, lm_decimals_of(0.05));
    TEST_COND("stepping 0.4 by 0.05 four times on the grid is exactly 0.6", v == 0.6);
    double raw = 0.4;
    for (int i = 0; i < 4; i++)
        raw += 0.05;
    TEST_COND("(without the grid it is not: the test can fail)", raw != 0.6);
    TEST_COND("rounding a small negative gives +0, not -0",
              lm_round_decimals(-0.001, 2) == 0 && !signbit(lm_round_decimals(-0.001, 2)));
    TEST_COND("rounding keeps the sign of real values", lm_round_decimals(-0.35000000000000003, 2) == -0.35);
}

static void test_locale(void)
{
    /* A locale with a decimal comma must not leak into the text. */
    if (!setlocale(LC_NUMERIC, "de_DE.UTF-8") && !setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
        TEST_COND("(no decimal-comma locale installed: checked with C)", 1);
        return;
    }
    char buf[LM_NUMBER_MAX];
    lm_format_number(0.6, buf, sizeof(buf));
    TEST_COND("under a decimal-comma locale 0.6 still prints as 0.6", strcmp(buf, "0.6") == 0);
    TEST_COND("... and rounding still reads its own text", lm_round_decimals(0.6000000000000001, 2) == 0.6);
    setlocale(LC_NUMERIC, "C");
}

int main(void)
{
    test_strings();
    test_round_trip();
    test_decimal_grid();
    test_locale();
    return test_report();
}

/* Numbers as people read them: the one formatter every screen, file and
 * export uses, so that a value typed as 0.6 is shown and saved as 0.6 and
 * reads back to the same double everywhere. */
#ifndef MS_COMMON_NUMFMT_H
#define MS_COMMON_NUMFMT_H

#include <stddef.h>

/* Room for any number lm_format_number writes, NUL included. */
#define LM_NUMBER_MAX 32

/* The shortest "%.Ng" text (N from 1 to 17) that reads back to exactly `v`,
 * written without an exponent from 1 up to 1e16 (540 -> "540", not
 * "5.4e+02"), with '.' as the decimal point whatever the locale: 0.6 -> "0.6",
 * 0.1 + 0.2 -> "0.30000000000000004", 42.0 -> "42", 1e-9 -> "1e-09",
 * -0.0 -> "-0". NaN and infinities print as "nan", "inf", "-inf".
 * `size` >= LM_NUMBER_MAX always suffices; shorter buffers truncate. */
void lm_format_number(double v, char *buf, size_t size);

/* `v` rounded to `decimals` digits after the point, as the double nearest
 * to that decimal text (so stepping 0.4 by 0.05 four times gives exactly
 * the double 0.6, not 0.6000000000000001). decimals is clamped to 0..15. */
double lm_round_decimals(double v, int decimals);

/* Digits after the point in the shortest text of `step` (0.05 -> 2,
 * 1 -> 0, 1e-3 -> 3): the decimal grid a step's multiples live on. */
int lm_decimals_of(double step);

#endif

/* Time for measuring work: seconds on the monotonic clock, which neither
 * jumps with the wall clock nor goes back. Only differences mean anything. */
#ifndef MS_COMMON_CLOCK_H
#define MS_COMMON_CLOCK_H

#include <time.h>

static inline double lm_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif

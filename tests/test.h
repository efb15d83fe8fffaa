/* A test runner the size of a header: each check prints one line saying what
 * it checked and whether it passed; test_report() prints the tally and gives
 * the exit status for main(), failing when no check ran. */
#ifndef MS_TESTS_TEST_H
#define MS_TESTS_TEST_H

#include <math.h>
#include <stdio.h>

static int test_count_run;
static int test_count_failed;

#define TEST_COND(descr, cond) do { \
    test_count_run++; \
    if (cond) { \
        printf("%3d - %s: PASSED\n", test_count_run, descr); \
    } else { \
        printf("%3d - %s: FAILED (%s:%d)\n", test_count_run, descr, __FILE__, __LINE__); \
        test_count_failed++; \
    } \
} while (0)

/* |a - b| <= tol, printing both values when the check fails. */
#define TEST_NEAR(descr, a, b, tol) do { \
    double test_a_ = (double)(a), test_b_ = (double)(b); \
    int test_ok_ = fabs(test_a_ - test_b_) <= (double)(tol); \
    TEST_COND(descr, test_ok_); \
    if (!test_ok_) printf("      got %.9g, expected %.9g (tol %g)\n", test_a_, test_b_, (double)(tol)); \
} while (0)

/* A program that ran no check has proved nothing: that is a failure too. */
static inline int test_report(void)
{
    printf("%d passed, %d failed\n", test_count_run - test_count_failed, test_count_failed);
    if (test_count_run == 0) {
        printf("no check ran: FAILED\n");
        return 1;
    }
    return test_count_failed ? 1 : 0;
}

#endif

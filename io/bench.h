/* Benchmark files: JSONL of {"question": ..., "answer": ...}, as `eval`
 * and `sweep` read them. */
#ifndef MS_IO_BENCH_H
#define MS_IO_BENCH_H

#include <stddef.h>

struct eval_item {
    char *question;
    char *answer;   /* a JSON number is kept as the shortest text that reads back to it */
};

struct eval_bench {
    char *path;
    struct eval_item *items;
    size_t n;
};

/* Reads a JSONL file: one object per line with a string "question" and an
 * "answer" that is a string or a number (other keys are ignored); blank
 * lines are skipped. Errors (LM_EIO, LM_EFORMAT) name the file and the line:
 * "bench.jsonl:7: \"answer\" is missing". An empty file is an error. */
int eval_bench_load(const char *path, struct eval_bench *out);
void eval_bench_deinit(struct eval_bench *b);

#endif

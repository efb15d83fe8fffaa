/* Calibration files: JSONL of {"prompt": ..., "response": ...}, the data the
 * activation-based merge methods (aim, sens) run through the models. The
 * loss of the sensitivity pass is taken on the response tokens. */
#ifndef MS_IO_CALIB_FILE_H
#define MS_IO_CALIB_FILE_H

#include <stddef.h>
#include <stdint.h>

struct calib_sample {
    char *prompt;
    char *response;
};

struct calib_file {
    char *path;
    struct calib_sample *samples;
    size_t n;
    uint64_t content_hash;  /* FNV-1a 64 of the file's bytes: what the on-disk cache keys on */
};

/* Reads a calibration file: one object per line with string "prompt" and
 * "response" (other keys are ignored; blank lines skipped). Errors name the
 * file and line: "calib.jsonl:3: \"response\" must be a string". An empty
 * file, or an empty prompt or response, is an error. */
int calib_file_load(const char *path, struct calib_file *out);
void calib_file_deinit(struct calib_file *f);

#endif

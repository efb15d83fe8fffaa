/* Errors and checked allocation: the one error convention of the library
 * (common/, io/, core/).
 *
 * Fallible functions return 0 on success or a negative LM_E* code (or NULL),
 * after leaving a message in a thread-local buffer: `return lm_err(LM_EFORMAT,
 * "%s: header too large", path);`. The caller that decides how to show errors
 * (the CLI prints it, the TUI puts it in the status line) reads it back with
 * lm_last_error(). Library code never prints and never exits, and never
 * returns a bare -1 or an exit status for an error: only app/ turns an LM_E*
 * code into a process exit status (0 ok, 1 runtime, 2 usage, 3 bad input).
 * Functions whose -1 means "none" (a lookup that found nothing) say so. */
#ifndef MS_COMMON_LM_ERROR_H
#define MS_COMMON_LM_ERROR_H

#include <stddef.h>

enum lm_status {
    LM_OK           =  0,
    LM_EIO          = -1, /* a system call failed: open, read, write, mmap, rename */
    LM_EFORMAT      = -2, /* a file or recipe is malformed */
    LM_ENOMEM       = -3, /* allocation failed or a size overflowed */
    LM_EINVAL       = -4, /* the caller asked for something invalid (bad argument, usage) */
    LM_ECANCELED    = -5, /* a progress callback asked to stop */
    LM_EUNSUPPORTED = -6, /* valid input this version cannot handle (dtype, architecture) */
    LM_EMISMATCH    = -7, /* models that cannot be combined: shapes, vocab sizes, missing tensors */
    LM_EREFUSED     = -8, /* a write that would destroy an input or files mergescope did not make */
    LM_ECHANGED     = -9, /* an input file changed on disk while it was open (size, mtime, or SIGBUS) */
};

#if defined(__GNUC__)
#define LM_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define LM_PRINTF(fmt_index, first_arg)
#endif

/* Records a message for this thread and returns `code`, so that error paths
 * read `return lm_err(LM_EIO, "...")`. */
int lm_err(int code, const char *fmt, ...) LM_PRINTF(2, 3);

/* Prepends "context: " to the current message (for callers that add the file
 * or tensor a lower layer did not know) and returns `code`. */
int lm_err_context(int code, const char *fmt, ...) LM_PRINTF(2, 3);

/* The message left by the last lm_err() on this thread ("" if none). */
const char *lm_last_error(void);

/* Clears the message for this thread. */
void lm_clear_error(void);

/* "io", "format", ... for a status code. */
const char *lm_status_name(int code);

/* Broken invariants (programmer errors) abort with file:line; bad input never
 * reaches here. */
#define LM_ASSERT(x) do { if (!(x)) lm_abort(__FILE__, __LINE__, #x); } while (0)
_Noreturn void lm_abort(const char *file, int line, const char *expr);

/* Checked allocation: NULL with an LM_ENOMEM message on failure or overflow.
 * Zero sizes allocate one byte so that NULL always means failure. */
void *lm_malloc(size_t size);
void *lm_calloc(size_t n, size_t size);
void *lm_malloc_array(size_t n, size_t size);
void *lm_realloc_array(void *ptr, size_t n, size_t size);
char *lm_strdup(const char *s);
char *lm_strndup(const char *s, size_t n);

/* A heap string built with printf formatting; caller frees. NULL on failure. */
char *lm_asprintf(const char *fmt, ...) LM_PRINTF(1, 2);

#define LM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define LM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LM_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif

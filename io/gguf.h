/* GGUF, llama.cpp's one-file model format: writing.
 *
 * File layout (version 3, little-endian; ggml's docs/gguf.md and
 * gguf-py's gguf_writer.py):
 *   1. u32 magic "GGUF" (the bytes 47 47 55 46), u32 version 3,
 *      u64 tensor count, u64 key/value count
 *   2. the key/value pairs: string key, u32 value type, value. A string is
 *      a u64 byte length and the bytes (no NUL); an array is a u32 element
 *      type, a u64 count and the elements
 *   3. the tensor infos: string name, u32 n_dims, u64 ne[n_dims], u32 ggml
 *      type, u64 offset of the data from the start of the data region.
 *      ne[0] is the length of a row: the row-major shape reversed
 *   4. zero bytes up to a multiple of the alignment (32 unless the file
 *      says general.alignment), then the data region: each tensor at its
 *      offset, every offset a multiple of the alignment, zero bytes
 *      between.
 *
 * The writer holds the key/value section in memory (a tokenizer's
 * vocabulary and merges: a few MB), never tensor data. Tensors are declared
 * (name, dtype, shape) before any data; gguf_writer_begin lays the file out
 * and writes everything but the data, after which each tensor's bytes may be
 * written in any order and from several threads at once, at their offsets.
 * Messages name the file and the key or tensor. */
#ifndef MS_IO_GGUF_H
#define MS_IO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define GGUF_MAGIC             0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_VERSION           3u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS          4
#define GGUF_MAX_NAME          63          /* bytes of a tensor name (ggml's GGML_MAX_NAME - 1) */

/* Value types of the key/value section. */
enum gguf_value_type {
    GGUF_VALUE_UINT8   = 0,
    GGUF_VALUE_INT8    = 1,
    GGUF_VALUE_UINT16  = 2,
    GGUF_VALUE_INT16   = 3,
    GGUF_VALUE_UINT32  = 4,
    GGUF_VALUE_INT32   = 5,
    GGUF_VALUE_FLOAT32 = 6,
    GGUF_VALUE_BOOL    = 7,
    GGUF_VALUE_STRING  = 8,
    GGUF_VALUE_ARRAY   = 9,
    GGUF_VALUE_UINT64  = 10,
    GGUF_VALUE_INT64   = 11,
    GGUF_VALUE_FLOAT64 = 12,
};

/* ggml's tensor type ids for the dtypes that can be written (ggml.h enum
 * ggml_type): F32 0, F16 1, Q8_0 8, BF16 30; -1 for the others. Q8_0
 * blocks are ggml's block_q8_0 (an f16 scale, then 32 int8), which is
 * LM_DTYPE_Q8_0's layout. */
int gguf_ggml_type(enum lm_dtype t);

/* True when `path` names a GGUF file (ends in ".gguf"): what `merge -o`
 * and the workbench's `w` write as one GGUF rather than a directory. */
bool gguf_is_path(const char *path);

struct gguf_writer;

/* Creates (or truncates) `path`. alignment 0 means 32; any other value
 * must be a power of two and is recorded as general.alignment. NULL with
 * an error. */
struct gguf_writer *gguf_writer_new(const char *path, uint32_t alignment);

/* Key/value pairs, in the order they are to appear; a key may be given
 * once. Strings must be valid UTF-8 (not checked here) and NUL-terminated. */
int gguf_writer_put_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_put_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_put_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_put_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_put_str(struct gguf_writer *w, const char *key, const char *v);
int gguf_writer_put_str_array(struct gguf_writer *w, const char *key, const char *const *v, size_t n);
int gguf_writer_put_i32_array(struct gguf_writer *w, const char *key, const int32_t *v, size_t n);

/* Declares a tensor: `shape` is row-major (the last dimension is the row),
 * 1 to GGUF_MAX_DIMS dimensions; dtype F32, F16, BF16 or Q8_0 (whose rows
 * must be a multiple of LM_Q8_GROUP long). Returns the tensor's index
 * (declaration order, which is also the order of the data) or an error. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum lm_dtype dtype,
                           int ndim, const int64_t *shape);

/* Lays the file out and writes the header, the key/value pairs, the
 * tensor infos and the padding; the data region is sized (zero-filled)
 * but not written. */
int gguf_writer_begin(struct gguf_writer *w);

/* Bytes of tensor `index`, and where they start in the file (after
 * gguf_writer_begin). */
uint64_t gguf_writer_tensor_bytes(const struct gguf_writer *w, size_t index);
uint64_t gguf_writer_tensor_file_offset(const struct gguf_writer *w, size_t index);

/* Stores bytes [offset, offset + nbytes) of tensor `index`; safe from
 * several threads at once. Every byte of every tensor must be written
 * exactly once before gguf_writer_commit, which checks the count. */
int gguf_writer_pwrite(struct gguf_writer *w, size_t index, uint64_t offset, const void *data,
                       size_t nbytes);

/* Checks that every data byte was written, fsyncs and closes the file.
 * The writer is freed whatever the result; on failure the file is
 * removed. */
int gguf_writer_commit(struct gguf_writer *w);
/* Closes and removes the file; accepts NULL. */
void gguf_writer_abort(struct gguf_writer *w);

#endif

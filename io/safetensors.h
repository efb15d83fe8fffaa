/* safetensors: reading (mmap, zero-copy views, full validation), writing
 * (aligned header, sharding with an index, temporary names and rename), and
 * sets of shards (`model.safetensors.index.json`).
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   1. u64 little-endian N: length of the JSON header
 *   2. N bytes of UTF-8 JSON: { "__metadata__": {str: str}, name: {"dtype": "BF16",
 *      "shape": [..], "data_offsets": [begin, end]}, ... }, padded with spaces
 *   3. the data region; offsets are relative to its start.
 *
 * The reader rejects: files shorter than 8 bytes, N > 100,000,000 or past the
 * end of the file, JSON that is not an object, invalid UTF-8, unknown dtypes,
 * shapes and offsets that are not non-negative integers below 2^53, shape x
 * dtype size that differs from end - begin (overflow-checked), offsets outside
 * the data region, overlapping tensors or holes (the tensors must tile the
 * data region exactly), duplicate names, metadata values that are not
 * strings. Every message names the file, the tensor and the numbers. */
#ifndef MS_IO_SAFETENSORS_H
#define MS_IO_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000ull

/* A tensor inside a file: a view, not owned; valid until the file is closed. */
struct st_tensor {
    const char   *name;
    enum lm_dtype dtype;
    int           ndim;
    int64_t       shape[ST_MAX_DIMS];
    uint64_t      n_elements;
    uint64_t      nbytes;
    const void   *data;        /* points into the mmap (NULL for parse-only headers) */
    uint64_t      data_offset; /* from the start of the data region */
};

struct st_file;

/* Maps and validates one .safetensors file. NULL with an error on failure. */
struct st_file *st_file_open(const char *path);
void st_file_close(struct st_file *f);

/* Parses and validates a header held in memory (the bytes of a whole file,
 * or just its first 8 + N bytes when data_size says how large the data
 * region is). `label` names the input in messages. Used by the fuzzers and
 * by st_file_open. data pointers of the tensors point into `buf` when the
 * data is present, else are NULL. */
struct st_file *st_file_parse(const void *buf, size_t len, uint64_t data_size, const char *label);

const char *st_file_path(const struct st_file *f);
size_t st_file_n_tensors(const struct st_file *f);
/* Tensors in header order sorted by name. */
const struct st_tensor *st_file_tensor(const struct st_file *f, size_t i);
/* NULL when absent (no error recorded). */
const struct st_tensor *st_file_find(const struct st_file *f, const char *name);
size_t st_file_n_metadata(const struct st_file *f);
void st_file_metadata(const struct st_file *f, size_t i, const char **key, const char **value);
/* Size of the whole file in bytes. */
uint64_t st_file_size(const struct st_file *f);

/* ===== Sets of files: a model directory's weights ===== */

/* All tensors of a model: one model.safetensors, a sharded set named by
 * model.safetensors.index.json (every shard it names is opened, each tensor
 * must be in the shard the index says, and every tensor of the index must
 * exist), or, with neither, every *.safetensors file in the directory.
 * A tensor name appearing twice across files is an error. */
struct st_set;

struct st_set *st_set_open_dir(const char *dir);
void st_set_close(struct st_set *s);
size_t st_set_n_tensors(const struct st_set *s);
/* Tensors sorted by name, across all files. */
const struct st_tensor *st_set_tensor(const struct st_set *s, size_t i);
/* Binary search by name; NULL when absent. */
const struct st_tensor *st_set_find(const struct st_set *s, const char *name);

/* Maps bytes [byte0, byte0 + len) of t's data in now, reading what the
 * page cache lacks (MADV_POPULATE_READ; advice only: nothing happens where
 * the system cannot). A pass that populates a few MB ahead of where it
 * reads pays the kernel once per range instead of a fault per few pages:
 * on virtual machines that shadow page tables, mapping a cold file this
 * way costs a third of the CPU and reads it faster. */
void st_tensor_populate(const struct st_tensor *t, uint64_t byte0, uint64_t len);
/* Total bytes of all weight files (for progress and benchmarks). */
uint64_t st_set_total_bytes(const struct st_set *s);
size_t st_set_n_files(const struct st_set *s);
const char *st_set_file_path(const struct st_set *s, size_t i);

/* ===== Writing ===== */

/* A writer produces one model's weights in `dir`: model.safetensors when all
 * tensors fit in one shard, else model-00001-of-0000N.safetensors files plus
 * model.safetensors.index.json. Tensors must be declared (name, dtype, shape)
 * before any data is written, and data is then written in declaration order,
 * possibly in pieces. Everything goes to hidden temporary names in `dir`
 * first; st_writer_commit() renames them into place (replacing older weight
 * files of the same names and removing other stale model*.safetensors and
 * index files only after the new ones are complete); st_writer_abort() or a
 * failure removes the temporaries and leaves `dir` as it was. */
struct st_writer;

struct st_writer_params {
    uint64_t shard_size;   /* max data bytes per shard; 0 = one file */
    const char *const *metadata_keys;   /* __metadata__, n_metadata pairs */
    const char *const *metadata_values;
    size_t n_metadata;
};
struct st_writer_params st_writer_default_params(void);

struct st_writer *st_writer_new(const char *dir, struct st_writer_params params);
int st_writer_add(struct st_writer *w, const char *name, enum lm_dtype dtype,
                  int ndim, const int64_t *shape);
/* Lays out shards and writes headers; after it only data may be written. */
int st_writer_begin(struct st_writer *w);
/* Appends bytes of the current tensor (declaration order); a tensor may be
 * written in several calls and must receive exactly its nbytes. */
int st_writer_write(struct st_writer *w, const void *data, size_t nbytes);
/* Positional writing, instead of st_writer_begin and st_writer_write:
 * lays out the shards and creates every one with its header, after which
 * tensors' bytes may be written in any order and from several threads at
 * once: st_writer_pwrite stores bytes [offset, offset + nbytes) of tensor
 * `index` (declaration order). Every byte must be written exactly once
 * before st_writer_commit (which checks the count). */
int st_writer_begin_positional(struct st_writer *w);
int st_writer_pwrite(struct st_writer *w, size_t index, uint64_t offset, const void *data,
                     size_t nbytes);
/* fsyncs and renames into place. The writer is freed whatever the result. */
int st_writer_commit(struct st_writer *w);
/* Removes temporaries; accepts NULL. */
void st_writer_abort(struct st_writer *w);

/* Whether the file (every file of the set) is still the one that was
 * mapped: same inode, size and modification time. A mapped file that
 * changed must not be read: a shrunk one raises SIGBUS, a rewritten one
 * gives other bytes than were checked. 0 or LM_ECHANGED naming the file and
 * what changed. */
int st_file_check_unchanged(const struct st_file *f);
int st_set_check_unchanged(const struct st_set *s);

#endif

/* libFuzzer harness for the safetensors header parser. The first input byte
 * picks the form of the rest:
 *   even: a whole file image (u64 length, header, data), taken as is, so that
 *         the length checks are reachable;
 *   odd:  a u16 LE data size, then the header JSON alone; the harness adds the
 *         matching length and that many data bytes, so that mutations of the
 *         JSON reach the entry and tiling checks without breaking the length.
 * The data region is whatever follows the header. An accepted file is then
 * walked to check the promises of the API: names sorted and unique, every
 * tensor found by name, views inside the buffer, and the tensors tiling the
 * data region. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static void run_image(const uint8_t *data, size_t size)
{
    uint64_t data_size = 0, n = 0;
    if (size >= 8) {
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | data[i];
        if (n <= size - 8)
            data_size = size - 8 - n;
    }
    struct st_file *f = st_file_parse(data, size, data_size, "fuzz");
    if (!f)
        return;

    check(st_file_size(f) == size);
    const uint8_t *region = data + 8 + n;
    uint64_t covered = 0;
    for (size_t i = 0; i < st_file_n_tensors(f); i++) {
        const struct st_tensor *t = st_file_tensor(f, i);
        check(st_file_find(f, t->name) == t);
        if (i > 0)
            check(strcmp(st_file_tensor(f, i - 1)->name, t->name) < 0);
        check(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        check(t->nbytes == t->n_elements * lm_dtype_size(t->dtype));
        check(t->data_offset + t->nbytes <= data_size);
        check((const uint8_t *)t->data == region + t->data_offset);
        covered += t->nbytes;
        /* Touch the first and last byte of every view. */
        if (t->nbytes) {
            volatile uint8_t sink = ((const uint8_t *)t->data)[0];
            sink = ((const uint8_t *)t->data)[t->nbytes - 1];
            (void)sink;
        }
    }
    check(covered == data_size);
    for (size_t i = 0; i < st_file_n_metadata(f); i++) {
        const char *k, *v;
        st_file_metadata(f, i, &k, &v);
        check(k && v);
    }
    st_file_close(f);

    /* The same header with the data left out must parse the same way. */
    if (size >= 8 + n) {
        f = st_file_parse(data, (size_t)(8 + n), data_size, "fuzz-header");
        check(f != NULL);
        for (size_t i = 0; f && i < st_file_n_tensors(f); i++)
            check(st_file_tensor(f, i)->data == NULL || st_file_tensor(f, i)->nbytes == 0);
        st_file_close(f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (!(mode & 1)) {
        run_image(data, size);
        return 0;
    }
    if (size < 2)
        return 0;
    size_t data_len = (size_t)data[0] | (size_t)data[1] << 8;
    const uint8_t *json = data + 2;
    size_t json_len = size - 2;
    size_t total = 8 + json_len + data_len;
    uint8_t *img = malloc(total);
    if (!img)
        return 0;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)json_len >> (8 * i));
    memcpy(img + 8, json, json_len);
    memset(img + 8 + json_len, 0xab, data_len);
    run_image(img, total);
    free(img);
    return 0;
}

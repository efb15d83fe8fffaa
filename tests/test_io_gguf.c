/* GGUF writing: a small file compared byte for byte with one laid out by
 * hand from the format's description, the writer's refusals, and what
 * gguf_llama.h decides for llama.cpp (tensor names, types, the Llama q/k
 * row order, Llama-3 rope factors, hyperparameter keys, the tokenizer),
 * read back with a small reader written here from the format's
 * description. Fixtures go to a fresh temporary directory. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "gguf.h"
#include "gguf_llama.h"

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert.h"
#include "fsutil.h"
#include "lm_error.h"
#include "test.h"

static char tmp_root[64];

static char *path_in(const char *name)
{
    char *p = lm_asprintf("%s/%s", tmp_root, name);
    if (!p)
        abort();
    return p;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    char *p = lm_read_file(path, (size_t)1 << 28, len);
    return (unsigned char *)p;
}

/* ===== The expected bytes, by hand ===== */

struct bytes {
    unsigned char b[4096];
    size_t n;
};

static void le(struct bytes *x, uint64_t v, int k)
{
    for (int i = 0; i < k; i++, v >>= 8)
        x->b[x->n++] = (unsigned char)(v & 0xff);
}

static void str(struct bytes *x, const char *s)
{
    le(x, strlen(s), 8);
    memcpy(x->b + x->n, s, strlen(s));
    x->n += strlen(s);
}

static void test_small_file(void)
{
    char *path = path_in("small.gguf");
    struct gguf_writer *w = gguf_writer_new(path, 0);
    TEST_COND("writer created", w != NULL);
    if (!w)
        return;
    const char *arr[] = { "a", "bc" };
    const int32_t ints[] = { 1, -2 };
    int rc = gguf_writer_put_str(w, "general.architecture", "qwen2");
    rc = rc ? rc : gguf_writer_put_u32(w, "k.u32", 0x01020304u);
    rc = rc ? rc : gguf_writer_put_f32(w, "k.f32", 1.5f);
    rc = rc ? rc : gguf_writer_put_bool(w, "k.bool", true);
    rc = rc ? rc : gguf_writer_put_i32(w, "k.i32", -3);
    rc = rc ? rc : gguf_writer_put_str_array(w, "k.strs", arr, 2);
    rc = rc ? rc : gguf_writer_put_i32_array(w, "k.ints", ints, 2);
    TEST_COND("seven keys stored", rc == 0);
    TEST_COND("a key given twice is refused", gguf_writer_put_u32(w, "k.u32", 1) == LM_EINVAL &&
              strstr(lm_last_error(), "'k.u32' given twice"));
    int64_t sx[2] = { 2, 3 }, sq[2] = { 1, 32 }, sbad[2] = { 2, 33 };
    int ix = gguf_writer_add_tensor(w, "x", LM_DTYPE_F32, 2, sx);
    int iq = gguf_writer_add_tensor(w, "q", LM_DTYPE_Q8_0, 2, sq);
    TEST_COND("tensors get their declaration index", ix == 0 && iq == 1);
    TEST_COND("a tensor declared twice is refused", gguf_writer_add_tensor(w, "x", LM_DTYPE_F32, 2, sx) == LM_EINVAL);
    TEST_COND("Q8_0 rows of 33 values are refused", gguf_writer_add_tensor(w, "bad", LM_DTYPE_Q8_0, 2, sbad) == LM_EINVAL
              && strstr(lm_last_error(), "groups of 32"));
    TEST_COND("an I32 tensor is refused", gguf_writer_add_tensor(w, "i", LM_DTYPE_I32, 2, sx) == LM_EUNSUPPORTED);
    char longname[80];
    memset(longname, 'n', 64);
    longname[64] = '\0';
    TEST_COND("a 64-byte name is refused (llama.cpp's limit is 63)",
              gguf_writer_add_tensor(w, longname, LM_DTYPE_F32, 2, sx) == LM_EINVAL);
    TEST_COND("pwrite before begin is refused", gguf_writer_pwrite(w, 0, 0, "x", 1) == LM_EINVAL);
    TEST_COND("begin", gguf_writer_begin(w) == 0);
    TEST_COND("no key after begin", gguf_writer_put_u32(w, "late", 1) == LM_EINVAL);
    TEST_COND("x is 24 bytes, q 34 (one Q8_0 block)",
              gguf_writer_tensor_bytes(w, 0) == 24 && gguf_writer_tensor_bytes(w, 1) == 34);
    const float xv[6] = { 1, 2, 3, 4, 5, 6 };
    float qf[32];
    for (int i = 0; i < 32; i++)
        qf[i] = (float)(i - 16) / 8.0f;
    unsigned char qb[34];
    lm_convert_from_f32(qb, LM_DTYPE_Q8_0, qf, 32);
    TEST_COND("a write past the tensor is refused", gguf_writer_pwrite(w, 0, 20, xv, 8) == LM_EINVAL);
    rc = gguf_writer_pwrite(w, 0, 12, xv + 3, 12);
    rc = rc ? rc : gguf_writer_pwrite(w, 0, 0, xv, 12);
    rc = rc ? rc : gguf_writer_pwrite(w, 1, 0, qb, 34);
    TEST_COND("data written in pieces, out of order", rc == 0);
    TEST_COND("commit", gguf_writer_commit(w) == 0);

    struct bytes e = { .n = 0 };
    le(&e, 0x46554747u, 4);  /* "GGUF" */
    le(&e, 3, 4);
    le(&e, 2, 8);            /* tensors */
    le(&e, 7, 8);            /* keys */
    str(&e, "general.architecture"); le(&e, 8, 4); str(&e, "qwen2");
    str(&e, "k.u32"); le(&e, 4, 4); le(&e, 0x01020304u, 4);
    str(&e, "k.f32"); le(&e, 6, 4); le(&e, 0x3fc00000u, 4);
    str(&e, "k.bool"); le(&e, 7, 4); le(&e, 1, 1);
    str(&e, "k.i32"); le(&e, 5, 4); le(&e, 0xfffffffdu, 4);
    str(&e, "k.strs"); le(&e, 9, 4); le(&e, 8, 4); le(&e, 2, 8); str(&e, "a"); str(&e, "bc");
    str(&e, "k.ints"); le(&e, 9, 4); le(&e, 5, 4); le(&e, 2, 8); le(&e, 1, 4); le(&e, 0xfffffffeu, 4);
    /* x: ne = [3, 2] (row length first), F32 (0), offset 0 */
    str(&e, "x"); le(&e, 2, 4); le(&e, 3, 8); le(&e, 2, 8); le(&e, 0, 4); le(&e, 0, 8);
    /* q: ne = [32, 1], Q8_0 (8), offset 32 (24 rounded up to the alignment) */
    str(&e, "q"); le(&e, 2, 4); le(&e, 32, 8); le(&e, 1, 8); le(&e, 8, 4); le(&e, 32, 8);
    size_t data_start = (e.n + 31) / 32 * 32;
    while (e.n < data_start)
        e.b[e.n++] = 0;
    memcpy(e.b + e.n, xv, 24);
    e.n += 24;
    memset(e.b + e.n, 0, 8);
    e.n += 8;
    memcpy(e.b + e.n, qb, 34);
    e.n += 34;
    while (e.n % 32)
        e.b[e.n++] = 0;   /* padded after the last tensor too, as gguf-py does */

    size_t len = 0;
    unsigned char *got = read_all(path, &len);
    TEST_COND("file size as laid out by hand", got && len == e.n);
    bool same = got && len == e.n && memcmp(got, e.b, e.n) == 0;
    TEST_COND("every byte as laid out by hand", same);
    if (got && !same)
        for (size_t i = 0; i < len && i < e.n; i++)
            if (got[i] != e.b[i]) {
                printf("      first difference at byte %zu: %02x, expected %02x\n", i, got[i], e.b[i]);
                break;
            }
    TEST_COND("data region aligned to 32", data_start % 32 == 0 && data_start > 0);
    /* The Q8_0 block: the scale max|x|/127 as f16, then round(x / d). */
    float d = lm_f16_to_f32((uint16_t)(qb[0] | qb[1] << 8));
    TEST_NEAR("Q8_0 scale is max|x| / 127", d, 2.0 / 127.0, 1e-3 * 2.0 / 127.0);
    TEST_COND("Q8_0 values: x = -2 -> -127, x = 0 -> 0, x = 1.875 -> 119",
              (int8_t)qb[2] == -127 && (int8_t)qb[2 + 16] == 0 && (int8_t)qb[2 + 31] == 119);
    free(got);
    free(path);
}

static void test_refusals(void)
{
    char *path = path_in("partial.gguf");
    struct gguf_writer *w = gguf_writer_new(path, 0);
    int64_t s[1] = { 4 };
    gguf_writer_add_tensor(w, "t", LM_DTYPE_F32, 1, s);
    gguf_writer_begin(w);
    float v[2] = { 1, 2 };
    gguf_writer_pwrite(w, 0, 0, v, 8);
    int rc = gguf_writer_commit(w);
    TEST_COND("commit with 8 of 16 data bytes is refused", rc == LM_EINVAL && strstr(lm_last_error(), "8 of 16"));
    TEST_COND("the incomplete file is removed", access(path, F_OK) != 0);
    free(path);

    TEST_COND("an alignment that is not a power of two is refused",
              gguf_writer_new("/nonexistent/x.gguf", 24) == NULL);
    path = path_in("aligned.gguf");
    w = gguf_writer_new(path, 64);
    gguf_writer_add_tensor(w, "t", LM_DTYPE_F32, 1, s);
    gguf_writer_begin(w);
    uint64_t off = gguf_writer_tensor_file_offset(w, 0);
    gguf_writer_abort(w);
    TEST_COND("alignment 64: data starts at a multiple of 64", off % 64 == 0 && off > 0);
    TEST_COND("abort removes the file", access(path, F_OK) != 0);
    free(path);
}

/* ===== llama.cpp's conventions ===== */

static void test_names_and_types(void)
{
    static const struct { const char *hf, *gguf; } map[] = {
        { "model.embed_tokens.weight", "token_embd.weight" },
        { "model.norm.weight", "output_norm.weight" },
        { "lm_head.weight", "output.weight" },
        { "model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight" },
        { "model.layers.11.post_attention_layernorm.weight", "blk.11.ffn_norm.weight" },
        { "model.layers.2.self_attn.q_proj.weight", "blk.2.attn_q.weight" },
        { "model.layers.2.self_attn.q_proj.bias", "blk.2.attn_q.bias" },
        { "model.layers.2.self_attn.k_proj.bias", "blk.2.attn_k.bias" },
        { "model.layers.2.self_attn.v_proj.weight", "blk.2.attn_v.weight" },
        { "model.layers.2.self_attn.o_proj.weight", "blk.2.attn_output.weight" },
        { "model.layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight" },
        { "model.layers.3.self_attn.k_norm.weight", "blk.3.attn_k_norm.weight" },
        { "model.layers.27.mlp.gate_proj.weight", "blk.27.ffn_gate.weight" },
        { "model.layers.27.mlp.up_proj.weight", "blk.27.ffn_up.weight" },
        { "model.layers.27.mlp.down_proj.weight", "blk.27.ffn_down.weight" },
    };
    bool all = true;
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
        char out[64];
        int rc = gguf_llama_tensor_name(map[k].hf, out, sizeof out);
        if (rc != 0 || strcmp(out, map[k].gguf) != 0) {
            printf("      %s -> %s (rc %d), expected %s\n", map[k].hf, rc ? "?" : out, rc, map[k].gguf);
            all = false;
        }
    }
    TEST_COND("HF names map to llama.cpp's", all);
    char out[64];
    TEST_COND("rotary_emb.inv_freq is dropped",
              gguf_llama_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq", out, sizeof out) == 1);
    TEST_COND("an unknown tensor is an error naming it",
              gguf_llama_tensor_name("model.layers.0.mlp.experts.0.w1.weight", out, sizeof out) == LM_EUNSUPPORTED &&
              strstr(lm_last_error(), "model.layers.0.mlp.experts.0.w1.weight"));

    int64_t mat[2] = { 64, 160 }, odd[2] = { 64, 48 }, vec[1] = { 160 };
    TEST_COND("matrices take the file type (BF16, Q8_0)",
              gguf_llama_tensor_dtype("blk.0.attn_q.weight", 2, mat, LM_DTYPE_BF16) == LM_DTYPE_BF16 &&
              gguf_llama_tensor_dtype("blk.0.attn_q.weight", 2, mat, LM_DTYPE_Q8_0) == LM_DTYPE_Q8_0);
    TEST_COND("Q8_0 rows of 48 fall back to F16",
              gguf_llama_tensor_dtype("blk.0.ffn_down.weight", 2, odd, LM_DTYPE_Q8_0) == LM_DTYPE_F16);
    TEST_COND("norms, biases and vectors stay F32",
              gguf_llama_tensor_dtype("blk.0.attn_norm.weight", 1, vec, LM_DTYPE_BF16) == LM_DTYPE_F32 &&
              gguf_llama_tensor_dtype("blk.0.attn_q.bias", 1, vec, LM_DTYPE_Q8_0) == LM_DTYPE_F32 &&
              gguf_llama_tensor_dtype("blk.0.attn_q_norm.weight", 1, vec, LM_DTYPE_F16) == LM_DTYPE_F32);
    TEST_COND("file types: F32 0, F16 1, Q8_0 7, BF16 32",
              gguf_llama_file_type(LM_DTYPE_F32) == 0 && gguf_llama_file_type(LM_DTYPE_F16) == 1 &&
              gguf_llama_file_type(LM_DTYPE_Q8_0) == 7 && gguf_llama_file_type(LM_DTYPE_BF16) == 32);
    TEST_COND("ggml type ids: F32 0, F16 1, Q8_0 8, BF16 30",
              gguf_ggml_type(LM_DTYPE_F32) == 0 && gguf_ggml_type(LM_DTYPE_F16) == 1 &&
              gguf_ggml_type(LM_DTYPE_Q8_0) == 8 && gguf_ggml_type(LM_DTYPE_BF16) == 30);
}

static void test_llama_rows(void)
{
    struct hf_config c;
    memset(&c, 0, sizeof c);
    c.arch = HF_ARCH_LLAMA;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    TEST_COND("Llama q: 4 heads, k: 2 heads, others none",
              gguf_llama_permute_heads(&c, "blk.0.attn_q.weight") == 4 &&
              gguf_llama_permute_heads(&c, "blk.0.attn_k.bias") == 2 &&
              gguf_llama_permute_heads(&c, "blk.0.attn_v.weight") == 0 &&
              gguf_llama_permute_heads(&c, "blk.0.attn_output.weight") == 0 &&
              gguf_llama_permute_heads(&c, "blk.0.attn_q_norm.weight") == 0);
    c.arch = HF_ARCH_QWEN2;
    TEST_COND("Qwen2 keeps HF order", gguf_llama_permute_heads(&c, "blk.0.attn_q.weight") == 0);
    /* The converter's permute: reshape(n_head, 2, d/2).swapaxes(1, 2):
     * new[h][i][j] = old[h][j][i]. 2 heads of 6 rows. */
    uint64_t rows = 12, want[12];
    for (uint64_t h = 0; h < 2; h++)
        for (uint64_t i = 0; i < 3; i++)
            for (uint64_t j = 0; j < 2; j++)
                want[h * 6 + j * 3 + i] = h * 6 + i * 2 + j;
    bool ok = true;
    for (uint64_t r = 0; r < rows; r++)
        ok = ok && gguf_llama_permuted_row(r, rows, 2) == want[r];
    TEST_COND("row r of each head goes where the converter's permute puts it", ok);
    TEST_COND("rows 0..5 of a 6-row head go to 0 2 4 1 3 5",
              gguf_llama_permuted_row(0, 6, 1) == 0 && gguf_llama_permuted_row(1, 6, 1) == 2 &&
              gguf_llama_permuted_row(2, 6, 1) == 4 && gguf_llama_permuted_row(3, 6, 1) == 1 &&
              gguf_llama_permuted_row(4, 6, 1) == 3 && gguf_llama_permuted_row(5, 6, 1) == 5);

    /* Llama-3.1's rope scaling (R1-Distill-Llama-8B): theta 500000, head
     * dim 128, factor 8, low 1, high 4, original context 8192. Factor 1
     * while 2 pi theta^(2i/128) < 2048 (i <= 28), 8 past 8192 (i >= 35). */
    memset(&c, 0, sizeof c);
    c.arch = HF_ARCH_LLAMA;
    c.rope_theta = 500000;
    char type[] = "llama3";
    c.rope_scaling_type = type;
    c.rope_scaling_factor = 8;
    c.rope_scaling_low_freq_factor = 1;
    c.rope_scaling_high_freq_factor = 4;
    c.rope_scaling_original_max_position_embeddings = 8192;
    float f[64];
    int has = gguf_llama_rope_freqs(&c, f, 64);
    TEST_COND("llama3 rope scaling gives factors", has == 1);
    TEST_COND("factors 1 up to i = 28, 8 from i = 35, between in 29..34",
              f[0] == 1.0f && f[28] == 1.0f && f[29] > 1.0f && f[29] < 8.0f && f[34] > f[29] &&
              f[34] < 8.0f && f[35] == 8.0f && f[63] == 8.0f);
    /* i = 32: wavelen = 2 pi 500000^0.5 = 4442.88; smooth = (8192 / wavelen - 1) / 3. */
    double wl = 2 * M_PI * sqrt(500000.0), sm = (8192.0 / wl - 1) / 3;
    TEST_NEAR("factor at i = 32", f[32], 1 / ((1 - sm) / 8 + sm), 1e-4);
    c.rope_scaling_type = NULL;
    TEST_COND("no rope scaling: no factors", gguf_llama_rope_freqs(&c, f, 64) == 0);
}

/* ===== Reading back: a small reader from the format's description ===== */

struct kv_view {
    uint32_t type, sub;
    uint64_t n;              /* array count */
    const unsigned char *v;  /* the value (for arrays: the first element) */
};

static uint64_t rd_le(const unsigned char *p, int k)
{
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static size_t scalar_size(uint32_t t)
{
    static const size_t sz[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    return t < 13 ? sz[t] : 0;
}

/* Finds `key` in a whole file's bytes. */
static bool find_kv(const unsigned char *f, size_t len, const char *key, struct kv_view *out)
{
    uint64_t n_kv = rd_le(f + 16, 8);
    size_t p = 24;
    for (uint64_t k = 0; k < n_kv && p < len; k++) {
        uint64_t kl = rd_le(f + p, 8);
        const unsigned char *kp = f + p + 8;
        p += 8 + kl;
        uint32_t t = (uint32_t)rd_le(f + p, 4);
        p += 4;
        struct kv_view v = { .type = t, .v = f + p };
        if (t == GGUF_VALUE_STRING) {
            p += 8 + rd_le(f + p, 8);
        } else if (t == GGUF_VALUE_ARRAY) {
            v.sub = (uint32_t)rd_le(f + p, 4);
            v.n = rd_le(f + p + 4, 8);
            p += 12;
            v.v = f + p;
            for (uint64_t i = 0; i < v.n; i++)
                p += v.sub == GGUF_VALUE_STRING ? 8 + rd_le(f + p, 8) : scalar_size(v.sub);
        } else {
            p += scalar_size(t);
        }
        if (kl == strlen(key) && memcmp(kp, key, kl) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

static bool kv_str_is(const unsigned char *f, size_t len, const char *key, const char *want)
{
    struct kv_view v;
    return find_kv(f, len, key, &v) && v.type == GGUF_VALUE_STRING && rd_le(v.v, 8) == strlen(want) &&
           memcmp(v.v + 8, want, strlen(want)) == 0;
}

static bool kv_u32_is(const unsigned char *f, size_t len, const char *key, uint32_t want)
{
    struct kv_view v;
    return find_kv(f, len, key, &v) && v.type == GGUF_VALUE_UINT32 && rd_le(v.v, 4) == want;
}

/* Element i of a string array. */
static bool arr_str_is(const struct kv_view *v, uint64_t i, const char *want)
{
    const unsigned char *p = v->v;
    for (uint64_t k = 0; k < i; k++)
        p += 8 + rd_le(p, 8);
    return rd_le(p, 8) == strlen(want) && memcmp(p + 8, want, strlen(want)) == 0;
}

static const char TOKENIZER_JSON[] =
    "{\"version\": \"1.0\", \"added_tokens\": ["
    " {\"id\": 6, \"content\": \"<|endoftext|>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
    " {\"id\": 7, \"content\": \"<|im_end|>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": false},"
    " {\"id\": 8, \"content\": \"<think>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": false}],"
    " \"normalizer\": {\"type\": \"NFC\"},"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
    "  {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": \"Isolated\", \"invert\": false},"
    "  {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}]},"
    " \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false},"
    " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false},"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"fuse_unk\": false, \"byte_fallback\": false,"
    "  \"vocab\": {\"a\": 0, \"b\": 1, \"\\u0120\": 2, \"ab\": 3, \"\\u0120a\": 4, \"\\u0120ab\": 5},"
    "  \"merges\": [\"a b\", \"\\u0120 a\", \"\\u0120a b\"]}}";

static const char TOKENIZER_CONFIG[] =
    "{\"bos_token\": null, \"eos_token\": \"<|im_end|>\", \"pad_token\": \"<|endoftext|>\","
    " \"add_bos_token\": false, \"chat_template\": \"{{ messages }}\"}";

static void test_tokenizer(void)
{
    struct tok_json *tj = tok_json_parse(TOKENIZER_JSON, strlen(TOKENIZER_JSON), "t/tokenizer.json");
    struct tokenizer_config tc;
    int rc = tokenizer_config_parse(TOKENIZER_CONFIG, strlen(TOKENIZER_CONFIG), "t/tokenizer_config.json", &tc);
    TEST_COND("fixture tokenizer parsed", tj && rc == 0);
    if (!tj || rc)
        return;
    TEST_COND("tokenizer_config: pad token and add_bos_token read, add_eos_token absent",
              tc.pad_token && strcmp(tc.pad_token, "<|endoftext|>") == 0 && tc.add_bos_token == 0 &&
              tc.add_eos_token == -1);
    TEST_COND("Qwen2's regex is llama.cpp's qwen2 pre-tokenizer",
              gguf_llama_pre_name(tj) && strcmp(gguf_llama_pre_name(tj), "qwen2") == 0);
    struct hf_config mc;
    memset(&mc, 0, sizeof mc);
    mc.bos_token_id = 6;
    mc.n_eos_token_ids = 1;
    mc.eos_token_ids[0] = 6;
    struct gguf_llama_tokenizer t = { .json = tj, .config = &tc, .model_config = &mc };

    char *path = path_in("tok.gguf");
    struct gguf_writer *w = gguf_writer_new(path, 0);
    rc = gguf_llama_put_tokenizer(w, &t, 8);
    TEST_COND("8 rows but a token with id 8: refused naming it",
              rc == LM_EMISMATCH && strstr(lm_last_error(), "'<think>' has id 8"));
    gguf_writer_abort(w);

    w = gguf_writer_new(path, 0);
    rc = gguf_llama_put_tokenizer(w, &t, 11);
    rc = rc ? rc : gguf_writer_begin(w);
    rc = rc ? rc : gguf_writer_commit(w);
    TEST_COND("tokenizer written for 11 rows", rc == 0);
    size_t len = 0;
    unsigned char *f = read_all(path, &len);
    struct kv_view v;
    TEST_COND("model gpt2, pre qwen2", f && kv_str_is(f, len, "tokenizer.ggml.model", "gpt2") &&
              kv_str_is(f, len, "tokenizer.ggml.pre", "qwen2"));
    bool tokens = f && find_kv(f, len, "tokenizer.ggml.tokens", &v) && v.type == GGUF_VALUE_ARRAY &&
                  v.sub == GGUF_VALUE_STRING && v.n == 11;
    TEST_COND("11 tokens", tokens);
    if (tokens)
        TEST_COND("tokens by id: vocab, added tokens, [PAD9] [PAD10]",
                  arr_str_is(&v, 0, "a") && arr_str_is(&v, 2, "\xc4\xa0") && arr_str_is(&v, 5, "\xc4\xa0" "ab") &&
                  arr_str_is(&v, 6, "<|endoftext|>") && arr_str_is(&v, 8, "<think>") &&
                  arr_str_is(&v, 9, "[PAD9]") && arr_str_is(&v, 10, "[PAD10]"));
    bool types = f && find_kv(f, len, "tokenizer.ggml.token_type", &v) && v.sub == GGUF_VALUE_INT32 && v.n == 11;
    TEST_COND("token types are an INT32 array of 11", types);
    if (types) {
        int32_t ty[11];
        for (int i = 0; i < 11; i++)
            ty[i] = (int32_t)rd_le(v.v + 4 * i, 4);
        TEST_COND("types: NORMAL, CONTROL (special), CONTROL (<|...|>), USER_DEFINED, UNUSED",
                  ty[0] == 1 && ty[5] == 1 && ty[6] == 3 && ty[7] == 3 && ty[8] == 4 && ty[9] == 5 && ty[10] == 5);
    }
    bool merges = f && find_kv(f, len, "tokenizer.ggml.merges", &v) && v.n == 3;
    TEST_COND("merges as 'left right'", merges && arr_str_is(&v, 0, "a b") && arr_str_is(&v, 1, "\xc4\xa0 a") &&
              arr_str_is(&v, 2, "\xc4\xa0" "a b"));
    TEST_COND("bos from config.json (tokenizer_config says null), eos and pad from tokenizer_config",
              f && kv_u32_is(f, len, "tokenizer.ggml.bos_token_id", 6) &&
              kv_u32_is(f, len, "tokenizer.ggml.eos_token_id", 7) &&
              kv_u32_is(f, len, "tokenizer.ggml.padding_token_id", 6) &&
              !find_kv(f, len, "tokenizer.ggml.unknown_token_id", &v));
    TEST_COND("add_bos_token false, as tokenizer_config says", f && find_kv(f, len, "tokenizer.ggml.add_bos_token", &v) &&
              v.type == GGUF_VALUE_BOOL && v.v[0] == 0 && !find_kv(f, len, "tokenizer.ggml.add_eos_token", &v));
    TEST_COND("chat template", f && kv_str_is(f, len, "tokenizer.chat_template", "{{ messages }}"));
    free(f);

    /* Two tokens with one text: llama.cpp would abort on it. */
    char *dup = lm_strdup(TOKENIZER_JSON);
    char *at = strstr(dup, "\"<think>\"");
    memcpy(at, "\"ab\"     ", 9);
    struct tok_json *tj2 = tok_json_parse(dup, strlen(dup), "t2/tokenizer.json");
    t.json = tj2;
    w = gguf_writer_new(path, 0);
    rc = tj2 ? gguf_llama_put_tokenizer(w, &t, 11) : -100;
    TEST_COND("the same token text twice is refused naming both ids",
              rc == LM_EFORMAT && strstr(lm_last_error(), "'ab' appears twice (ids 3 and 8)"));
    gguf_writer_abort(w);
    tok_json_free(tj2);
    free(dup);

    /* A pre-tokenizer llama.cpp has no name for. */
    char *odd = lm_strdup(TOKENIZER_JSON);
    at = strstr(odd, "\\\\p{N}|");
    memcpy(at, "\\\\p{L}|", 7);
    struct tok_json *tj3 = tok_json_parse(odd, strlen(odd), "t3/tokenizer.json");
    TEST_COND("an unknown pre-tokenizer regex is refused naming the file",
              tj3 && gguf_llama_pre_name(tj3) == NULL && strstr(lm_last_error(), "t3/tokenizer.json"));
    tok_json_free(tj3);
    free(odd);

    tokenizer_config_deinit(&tc);
    tok_json_free(tj);
    free(path);
}

static void test_hparams(void)
{
    struct hf_config c;
    memset(&c, 0, sizeof c);
    c.arch = HF_ARCH_QWEN3;
    c.hidden_size = 1024;
    c.num_hidden_layers = 28;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 8;
    c.head_dim = 128;
    c.intermediate_size = 3072;
    c.max_position_embeddings = 40960;
    c.rope_theta = 1000000;
    c.rms_norm_eps = 1e-6;
    char *path = path_in("hp.gguf");
    struct gguf_writer *w = gguf_writer_new(path, 0);
    int rc = gguf_llama_put_hparams(w, &c, "m", LM_DTYPE_Q8_0, 151936);
    rc = rc ? rc : gguf_writer_begin(w);
    rc = rc ? rc : gguf_writer_commit(w);
    TEST_COND("Qwen3 hyperparameters written", rc == 0);
    size_t len = 0;
    unsigned char *f = read_all(path, &len);
    struct kv_view v;
    TEST_COND("qwen3 keys (head_dim 128 as key/value length, not hidden / heads)",
              f && kv_str_is(f, len, "general.architecture", "qwen3") &&
              kv_u32_is(f, len, "qwen3.block_count", 28) && kv_u32_is(f, len, "qwen3.context_length", 40960) &&
              kv_u32_is(f, len, "qwen3.embedding_length", 1024) &&
              kv_u32_is(f, len, "qwen3.feed_forward_length", 3072) &&
              kv_u32_is(f, len, "qwen3.attention.head_count", 16) &&
              kv_u32_is(f, len, "qwen3.attention.head_count_kv", 8) &&
              kv_u32_is(f, len, "qwen3.attention.key_length", 128) &&
              kv_u32_is(f, len, "qwen3.attention.value_length", 128) &&
              kv_u32_is(f, len, "general.file_type", 7) && kv_u32_is(f, len, "general.quantization_version", 2));
    float eps = 0, theta = 0;
    if (f && find_kv(f, len, "qwen3.attention.layer_norm_rms_epsilon", &v) && v.type == GGUF_VALUE_FLOAT32)
        memcpy(&eps, v.v, 4);
    if (f && find_kv(f, len, "qwen3.rope.freq_base", &v) && v.type == GGUF_VALUE_FLOAT32)
        memcpy(&theta, v.v, 4);
    TEST_COND("eps and rope base as FLOAT32", eps == 1e-6f && theta == 1e6f);
    TEST_COND("no llama-only keys for qwen3", f && !find_kv(f, len, "qwen3.rope.dimension_count", &v));
    free(f);

    c.arch = HF_ARCH_UNKNOWN;
    char mt[] = "gemma2";
    c.model_type = mt;
    w = gguf_writer_new(path, 0);
    TEST_COND("another architecture is refused naming it",
              gguf_llama_put_hparams(w, &c, "m", LM_DTYPE_BF16, 10) == LM_EUNSUPPORTED &&
              strstr(lm_last_error(), "'gemma2'"));
    gguf_writer_abort(w);
    free(path);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

int main(void)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/ms-test-gguf-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_small_file();
    test_refusals();
    test_names_and_types();
    test_llama_rows();
    test_tokenizer();
    test_hparams();
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    TEST_COND("fixture directory removed", access(tmp_root, F_OK) != 0);
    return test_report();
}

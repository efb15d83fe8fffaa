/* Tokenizer unit tests on small tokenizer.json files written by the test:
 * both merges formats, added and special tokens, the byte-level alphabet,
 * normalization, decoding (whole and streamed), and the rejection of
 * malformed files. Agreement with Hugging Face on real tokenizers is
 * test_tokenizer_hf.sh's job. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lm_error.h"
#include "test.h"
#include "tokenizer.h"

/* ===== Building tokenizer.json text ===== */

struct buf {
    char  *s;
    size_t n, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (!b->s)
            abort();
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* GPT-2's byte alphabet, as the tokenizer's own table (checked separately
 * through decoding). */
static unsigned byte_cp(unsigned b)
{
    static unsigned cp[256];
    static bool done;
    if (!done) {
        unsigned next = 256;
        for (unsigned i = 0; i < 256; i++) {
            bool printable = (i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) ||
                             (i >= 0xAE && i <= 0xFF);
            cp[i] = printable ? i : next++;
        }
        done = true;
    }
    return cp[b];
}

static void buf_cp(struct buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    }
    if (cp == '"' || cp == '\\')
        buf_add(b, "\\", 1);
    buf_add(b, u, n);
}

/* Byte-level form of a raw string, JSON-escaped. */
static void buf_bytelevel(struct buf *b, const char *raw)
{
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++)
        buf_cp(b, byte_cp(*p));
}

/* The merges every test tokenizer has ("hello", " world", "ab"), given as
 * pairs of raw strings. */
static const char *const test_merges[][2] = {
    { "h", "e" }, { "l", "l" }, { "he", "ll" }, { "hell", "o" },
    { " ", "w" }, { " w", "o" }, { " wo", "r" }, { " wor", "l" }, { " worl", "d" },
    { "a", "b" }, { "ab", "c" }, { "b", "c" },
};

struct spec {
    bool        string_merges;  /* "a b" instead of ["a", "b"] */
    bool        ignore_merges;
    const char *extra_vocab;    /* raw strings added after the merges' tokens, ; separated */
    const char *added;          /* JSON array body of added_tokens, or NULL */
    const char *normalizer;     /* JSON, or NULL for null */
    const char *pre_tokenizer;  /* JSON, or NULL for Qwen's Split + ByteLevel */
    const char *post_processor; /* JSON, or NULL */
};

static const char qwen_pre[] =
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}"
    "\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\","
    "\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,"
    "\"use_regex\":false}]}";

/* A byte-level BPE tokenizer: ids 0..255 are the bytes, then one token per
 * merge result in merge order, then the extra vocabulary. */
static char *make_json(const struct spec *sp)
{
    struct buf b = { 0 };
    buf_puts(&b, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    if (sp->added)
        buf_puts(&b, sp->added);
    buf_puts(&b, "],\"normalizer\":");
    buf_puts(&b, sp->normalizer ? sp->normalizer : "null");
    buf_puts(&b, ",\"pre_tokenizer\":");
    buf_puts(&b, sp->pre_tokenizer ? sp->pre_tokenizer : qwen_pre);
    buf_puts(&b, ",\"post_processor\":");
    buf_puts(&b, sp->post_processor ? sp->post_processor : "null");
    buf_puts(&b, ",\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                 "\"trim_offsets\":false,\"use_regex\":false},\"model\":{\"type\":\"BPE\","
                 "\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":\"\","
                 "\"end_of_word_suffix\":\"\",\"fuse_unk\":false,\"byte_fallback\":false,");
    buf_puts(&b, sp->ignore_merges ? "\"ignore_merges\":true," : "\"ignore_merges\":false,");
    buf_puts(&b, "\"vocab\":{");
    int id = 0;
    char num[32];
    for (unsigned i = 0; i < 256; i++) {
        buf_puts(&b, i ? ",\"" : "\"");
        buf_cp(&b, byte_cp(i));
        snprintf(num, sizeof(num), "\":%d", id++);
        buf_puts(&b, num);
    }
    for (size_t i = 0; i < LM_ARRAY_SIZE(test_merges); i++) {
        buf_puts(&b, ",\"");
        buf_bytelevel(&b, test_merges[i][0]);
        buf_bytelevel(&b, test_merges[i][1]);
        snprintf(num, sizeof(num), "\":%d", id++);
        buf_puts(&b, num);
    }
    if (sp->extra_vocab) {
        char *copy = strdup(sp->extra_vocab);
        char *save = NULL;
        for (char *w = strtok_r(copy, ";", &save); w; w = strtok_r(NULL, ";", &save)) {
            buf_puts(&b, ",\"");
            buf_bytelevel(&b, w);
            snprintf(num, sizeof(num), "\":%d", id++);
            buf_puts(&b, num);
        }
        free(copy);
    }
    buf_puts(&b, "},\"merges\":[");
    for (size_t i = 0; i < LM_ARRAY_SIZE(test_merges); i++) {
        buf_puts(&b, i ? "," : "");
        buf_puts(&b, sp->string_merges ? "\"" : "[\"");
        buf_bytelevel(&b, test_merges[i][0]);
        buf_puts(&b, sp->string_merges ? " " : "\",\"");
        buf_bytelevel(&b, test_merges[i][1]);
        buf_puts(&b, sp->string_merges ? "\"" : "\"]");
    }
    buf_puts(&b, "]}}");
    return b.s;
}

static char tmpdir[256];

static char *write_file(const char *name, const char *text, size_t len)
{
    char *path = malloc(strlen(tmpdir) + strlen(name) + 2);
    if (!path)
        abort();
    sprintf(path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0)
        abort();
    return path;
}

static struct tok *load_spec(const struct spec *sp)
{
    char *json = make_json(sp);
    struct tok *t = tok_load_buffer(json, strlen(json), "test.json");
    if (!t)
        printf("      load failed: %s\n", lm_last_error());
    free(json);
    return t;
}

/* ===== Helpers for checks ===== */

static bool encode_is(const struct tok *t, const char *text, bool special, const int32_t *want,
                      size_t n_want)
{
    struct tok_ids ids = { 0 };
    int rc = tok_encode(t, text, strlen(text), special, &ids);
    bool ok = rc == 0 && ids.n == n_want &&
              (n_want == 0 || memcmp(ids.data, want, n_want * sizeof(*want)) == 0);
    if (!ok) {
        printf("      encode(\"%s\") rc %d gave [", text, rc);
        for (size_t i = 0; i < ids.n; i++)
            printf(i ? ",%d" : "%d", (int)ids.data[i]);
        printf("]\n");
    }
    tok_ids_free(&ids);
    return ok;
}

static int32_t id_of(const struct tok *t, const char *raw)
{
    struct buf b = { 0 };
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        char u[2];
        unsigned cp = byte_cp(*p);
        if (cp < 0x80) {
            u[0] = (char)cp;
            buf_add(&b, u, 1);
        } else {
            u[0] = (char)(0xC0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3F));
            buf_add(&b, u, 2);
        }
    }
    int32_t id = tok_token_to_id(t, b.s);
    free(b.s);
    return id;
}

static bool roundtrip(const struct tok *t, const char *text, size_t len, bool special)
{
    struct tok_ids ids = { 0 };
    char *out = NULL;
    size_t out_len = 0;
    bool ok = tok_encode(t, text, len, special, &ids) == 0 &&
              tok_decode(t, ids.data, ids.n, false, &out, &out_len) == 0 && out_len == len &&
              memcmp(out, text, len) == 0;
    free(out);
    tok_ids_free(&ids);
    return ok;
}

/* Strict UTF-8 check (no overlongs, surrogates or values past U+10FFFF). */
static bool valid_utf8(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (n - i <= k || u[i + 1] < lo || u[i + 1] > hi)
            return false;
        for (size_t m = 2; m <= k; m++)
            if ((u[i + m] & 0xC0) != 0x80)
                return false;
        i += k + 1;
    }
    return true;
}

/* Streams ids through a tok_stream and returns the concatenated text. */
static char *stream_all(const struct tok *t, const int32_t *ids, size_t n, size_t *len)
{
    struct tok_stream *s = tok_stream_new(t, false);
    struct buf b = { 0 };
    buf_add(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        const char *text;
        size_t tl;
        if (tok_stream_push(s, ids[i], &text, &tl) != 0)
            abort();
        buf_add(&b, text, tl);
    }
    const char *text;
    size_t tl;
    tok_stream_flush(s, &text, &tl);
    buf_add(&b, text, tl);
    tok_stream_free(s);
    *len = b.n;
    return b.s;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* ===== Tests ===== */

static const char added_tokens[] =
    "{\"id\":0,\"content\":\"<|end|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":0,\"content\":\"<think>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":false},"
    "{\"id\":0,\"content\":\"<|end|>x\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true}";

static void test_merges_formats(void)
{
    struct spec pairs = { 0 }, strings = { .string_merges = true };
    struct tok *a = load_spec(&pairs), *b = load_spec(&strings);
    TEST_COND("tokenizer with [\"a\",\"b\"] merges loads", a != NULL);
    TEST_COND("tokenizer with \"a b\" merges loads", b != NULL);
    if (!a || !b) {
        tok_free(a);
        tok_free(b);
        return;
    }
    int32_t want[] = { id_of(a, "hello"), id_of(a, " world") };
    TEST_COND("merged tokens exist", want[0] == 256 + 3 && want[1] == 256 + 8);
    TEST_COND("\"hello world\" -> [hello, Ġworld] with pair merges",
              encode_is(a, "hello world", false, want, 2));
    TEST_COND("\"hello world\" -> the same ids with string merges",
              encode_is(b, "hello world", false, want, 2));
    /* "abc": merges a b (rank 9), ab c (rank 10), b c (rank 11): lowest rank
     * first gives ab then abc */
    int32_t abc[] = { id_of(a, "abc") };
    TEST_COND("merge ranks: \"abc\" -> [abc] via ab (rank 9) before bc (rank 11)",
              encode_is(a, "abc", false, abc, 1));
    int32_t bcab[] = { id_of(a, "bc"), id_of(a, "ab") };
    TEST_COND("\"bcab\" -> [bc, ab]", encode_is(a, "bcab", false, bcab, 2));
    /* characters without merges fall back to one token per byte */
    int32_t e_acute[] = { 0xC3, 0xA9 };
    TEST_COND("\"é\" (no merges) -> its two byte-level tokens",
              encode_is(a, "é", false, e_acute, 2));
    int32_t emoji[] = { 0xF0, 0x9F, 0x98, 0x80 };
    TEST_COND("\"😀\" -> four byte-level tokens", encode_is(a, "😀", false, emoji, 4));
    int32_t space[] = { ' ', 'x' };
    TEST_COND("\" x\" -> [Ġ, x] (no merge for it)", encode_is(a, " x", false, space, 2));
    int32_t none[] = { 0 };
    TEST_COND("\"\" -> no ids", encode_is(a, "", false, none, 0));
    TEST_COND("tok_n_vocab counts bytes and merges", tok_n_vocab(a) == 256 + 12);
    TEST_COND("tok_id_to_token gives the byte-level text",
              tok_id_to_token(a, id_of(a, " world")) &&
              strcmp(tok_id_to_token(a, id_of(a, " world")), "\xC4\xA0world") == 0);
    TEST_COND("tok_id_to_token of an unknown id is NULL",
              tok_id_to_token(a, 100000) == NULL && tok_id_to_token(a, -1) == NULL);
    TEST_COND("tok_bos_id is -1 without a post-processor", tok_bos_id(a) == -1);
    tok_free(a);
    tok_free(b);
}

static void test_added_tokens(void)
{
    struct spec sp = { .added = added_tokens };
    struct tok *t = load_spec(&sp);
    TEST_COND("tokenizer with added tokens loads", t != NULL);
    if (!t)
        return;
    int32_t end = tok_token_to_id(t, "<|end|>"), think = tok_token_to_id(t, "<think>");
    int32_t endx = tok_token_to_id(t, "<|end|>x");
    TEST_COND("added tokens are numbered after the vocabulary, in file order",
              end == 268 && think == 269 && endx == 270);
    TEST_COND("tok_is_special: <|end|> yes, <think> no, hello no",
              tok_is_special(t, end) && !tok_is_special(t, think) &&
              !tok_is_special(t, id_of(t, "hello")));
    int32_t hello = id_of(t, "hello");
    int32_t w1[] = { hello, end, hello };
    TEST_COND("special token matched when allowed", encode_is(t, "hello<|end|>hello", true, w1, 3));
    int32_t w2[] = { hello, '<', '|', 'e', 'n', 'd', '|', '>', hello };
    TEST_COND("special token text stays text by default", encode_is(t, "hello<|end|>hello", false,
                                                                   w2, 9));
    int32_t w3[] = { think, hello, think };
    TEST_COND("non-special added token matched in both modes",
              encode_is(t, "<think>hello<think>", false, w3, 3) &&
              encode_is(t, "<think>hello<think>", true, w3, 3));
    int32_t w4[] = { endx, end };
    TEST_COND("leftmost-longest: \"<|end|>x<|end|>\" -> [<|end|>x, <|end|>]",
              encode_is(t, "<|end|>x<|end|>", true, w4, 2));
    int32_t w5[] = { ' ', end, ' ', 'x' };
    TEST_COND("added tokens are cut before pre-tokenization (no Ġ glued to them)",
              encode_is(t, " <|end|> x", true, w5, 4));
    char *out = NULL;
    size_t len;
    int32_t ids[] = { hello, end, think };
    TEST_COND("decode writes added tokens as their text",
              tok_decode(t, ids, 3, false, &out, &len) == 0 && len == 19 &&
              strcmp(out, "hello<|end|><think>") == 0);
    free(out);
    TEST_COND("decode with skip_special drops special tokens only",
              tok_decode(t, ids, 3, true, &out, &len) == 0 && strcmp(out, "hello<think>") == 0);
    free(out);
    int32_t bad[] = { hello, 5000 };
    TEST_COND("decode of an unknown id is LM_EINVAL",
              tok_decode(t, bad, 2, false, &out, &len) == LM_EINVAL && out == NULL &&
              strstr(lm_last_error(), "5000") != NULL);
    tok_free(t);
}

static void test_ignore_merges(void)
{
    struct spec with = { .ignore_merges = true, .extra_vocab = "bca" };
    struct spec without = { .extra_vocab = "bca" };
    struct tok *a = load_spec(&with), *b = load_spec(&without);
    TEST_COND("ignore_merges tokenizers load", a && b);
    if (a && b) {
        int32_t whole[] = { id_of(a, "bca") };
        int32_t merged[] = { id_of(b, "bc"), 'a' };
        TEST_COND("ignore_merges: a piece in the vocabulary is emitted whole",
                  encode_is(a, "bca", false, whole, 1));
        TEST_COND("without ignore_merges the same piece goes through the merges",
                  encode_is(b, "bca", false, merged, 2));
    }
    tok_free(a);
    tok_free(b);
}

static void test_normalizer(void)
{
    struct spec sp = { .normalizer = "{\"type\":\"NFC\"}" };
    struct tok *t = load_spec(&sp);
    TEST_COND("NFC tokenizer loads", t != NULL);
    if (!t)
        return;
    int32_t composed[] = { 0xC3, 0xA9 };
    TEST_COND("NFC: \"e\\u0301\" encodes as \"é\"", encode_is(t, "e\xCC\x81", false, composed, 2));
    TEST_COND("NFC: \"é\" unchanged", encode_is(t, "\xC3\xA9", false, composed, 2));
    tok_free(t);
}

/* Random strings from pieces that stress every stage, invalid UTF-8
 * included: encode then decode must give the input back. */
static void test_roundtrip(void)
{
    struct spec sp = { .added = added_tokens, .normalizer = NULL };
    struct tok *t = load_spec(&sp);
    if (!t)
        return;
    static const char *const pieces[] = {
        "hello", " world", "abc", " ", "  ", "\n", "\r\n", "\t", "é", "你好", "😀", "👨‍👩‍👧",
        "<|end|>", "<think>", "<|end", "'s", "123", "\xFF", "\xC3", "\xE4\xBD", "\xED\xA0\x80",
        "\xF0\x9F\x98", "\x80", "\xC0\xAF", "\xF5\x80\x80\x80", "\x00", "x\xA0y",
    };
    bool all = true, all_special = true, stream_ok = true;
    for (int round = 0; round < 300; round++) {
        char text[512];
        size_t len = 0;
        int n = (int)(rng() % 12);
        for (int k = 0; k < n; k++) {
            const char *p = pieces[rng() % LM_ARRAY_SIZE(pieces)];
            size_t pl = p[0] ? strlen(p) : 1; /* "\x00" stands for one NUL byte */
            memcpy(text + len, p, pl);
            len += pl;
        }
        if (!roundtrip(t, text, len, false)) {
            all = false;
            printf("      round trip failed on %zu bytes (round %d)\n", len, round);
        }
        if (!roundtrip(t, text, len, true))
            all_special = false;
        struct tok_ids ids = { 0 };
        tok_encode(t, text, len, false, &ids);
        size_t sl;
        char *streamed = stream_all(t, ids.data, ids.n, &sl);
        if (!valid_utf8(streamed, sl) || (valid_utf8(text, len) && (sl != len ||
                                                                    memcmp(streamed, text, len))))
            stream_ok = false;
        free(streamed);
        tok_ids_free(&ids);
    }
    TEST_COND("decode(encode(x)) == x for 300 random byte strings, invalid UTF-8 included", all);
    TEST_COND("the same with special tokens allowed", all_special);
    TEST_COND("streamed decode: valid UTF-8 always, equal to the input when it was valid",
              stream_ok);
    tok_free(t);
}

static void test_stream(void)
{
    struct spec sp = { .added = added_tokens };
    struct tok *t = load_spec(&sp);
    if (!t)
        return;
    struct tok_stream *s = tok_stream_new(t, false);
    const char *text;
    size_t len;
    /* "é" is two byte-level tokens: C3 then A9 */
    bool ok = tok_stream_push(s, 0xC3, &text, &len) == 0 && len == 0;
    TEST_COND("stream: first byte of \"é\" is held back", ok);
    ok = tok_stream_push(s, 0xA9, &text, &len) == 0 && len == 2 && memcmp(text, "\xC3\xA9", 2) == 0;
    TEST_COND("stream: second byte completes \"é\"", ok);
    int32_t emoji[] = { 0xF0, 0x9F, 0x98, 0x80 };
    bool early = false;
    for (int i = 0; i < 3; i++) {
        tok_stream_push(s, emoji[i], &text, &len);
        early = early || len != 0;
    }
    tok_stream_push(s, emoji[3], &text, &len);
    TEST_COND("stream: a 4-byte emoji over 4 tokens comes out once, whole",
              !early && len == 4 && memcmp(text, "\xF0\x9F\x98\x80", 4) == 0);
    ok = tok_stream_push(s, tok_token_to_id(t, "hello"), &text, &len) == 0 && len == 5 &&
         memcmp(text, "hello", 5) == 0;
    TEST_COND("stream: a whole token comes out at once", ok);
    ok = tok_stream_push(s, 0xFF, &text, &len) == 0 && len == 3 &&
         memcmp(text, "\xEF\xBF\xBD", 3) == 0;
    TEST_COND("stream: a byte that can never be UTF-8 becomes U+FFFD", ok);
    tok_stream_push(s, 0xE4, &text, &len);
    ok = tok_stream_push(s, 'a', &text, &len) == 0 && len == 4 &&
         memcmp(text, "\xEF\xBF\xBD" "a", 4) == 0;
    TEST_COND("stream: a cut-off character followed by ASCII becomes U+FFFD + the ASCII", ok);
    tok_stream_push(s, 0xE4, &text, &len);
    tok_stream_push(s, 0xBD, &text, &len);
    ok = tok_stream_flush(s, &text, &len) == 0 && len == 3 && memcmp(text, "\xEF\xBF\xBD", 3) == 0;
    TEST_COND("stream: flush turns a held incomplete character into one U+FFFD", ok);
    ok = tok_stream_flush(s, &text, &len) == 0 && len == 0;
    TEST_COND("stream: flush again gives nothing", ok);
    TEST_COND("stream: unknown id is LM_EINVAL",
              tok_stream_push(s, 99999, &text, &len) == LM_EINVAL);
    tok_stream_free(s);

    s = tok_stream_new(t, true);
    ok = tok_stream_push(s, tok_token_to_id(t, "<|end|>"), &text, &len) == 0 && len == 0 &&
         tok_stream_push(s, tok_token_to_id(t, "<think>"), &text, &len) == 0 && len == 7;
    TEST_COND("stream with skip_special: special tokens print nothing, others their text", ok);
    tok_stream_free(s);
    tok_free(t);
}

static void test_post_processor(void)
{
    struct spec sp = {
        .added = "{\"id\":0,\"content\":\"<|begin_of_text|>\",\"special\":true,"
                 "\"normalized\":false}",
        .post_processor =
            "{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\"},"
            "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":"
            "\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
            "\"pair\":[],\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>\","
            "\"ids\":[268],\"tokens\":[\"<|begin_of_text|>\"]}}}]}",
    };
    struct tok *t = load_spec(&sp);
    TEST_COND("Llama-3-style post-processor: tok_bos_id is <|begin_of_text|>",
              t && tok_bos_id(t) == 268);
    tok_free(t);
}

struct thread_arg {
    const struct tok *t;
    bool ok;
};

static void *encode_thread(void *p)
{
    struct thread_arg *a = p;
    a->ok = true;
    for (int i = 0; i < 200; i++) {
        int32_t want[] = { id_of(a->t, "hello"), id_of(a->t, " world") };
        if (!encode_is(a->t, "hello world", false, want, 2))
            a->ok = false;
    }
    return NULL;
}

static void test_threads(void)
{
    struct spec sp = { 0 };
    struct tok *t = load_spec(&sp);
    if (!t)
        return;
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].t = t;
        pthread_create(&th[i], NULL, encode_thread, &args[i]);
    }
    bool ok = true;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok = ok && args[i].ok;
    }
    TEST_COND("four threads encoding with one tokenizer get the same ids", ok);
    tok_free(t);
}

static void test_json_layout(void)
{
    /* the same tokenizer with whitespace in every place JSON allows it */
    struct spec sp = { 0 };
    char *json = make_json(&sp);
    struct buf b = { 0 };
    buf_puts(&b, " \n\t");
    bool in_string = false;
    for (const char *p = json; *p; p++) {
        buf_add(&b, p, 1);
        if (in_string && *p == '\\') {
            buf_add(&b, ++p, 1);
        } else if (*p == '"') {
            in_string = !in_string;
        } else if (!in_string && (*p == ',' || *p == ':' || *p == '{' || *p == '[')) {
            buf_puts(&b, " \r\n ");
        }
    }
    buf_puts(&b, "\n");
    free(json);
    /* and a scalar right before a closing brace */
    char *at = strstr(b.s, "\"ignore_merges\":");
    bool ok = at != NULL;
    struct tok *t = NULL;
    if (ok) {
        struct buf c = { 0 };
        buf_add(&c, b.s, (size_t)(at - b.s));
        buf_puts(&c, "\"x\": {\"n\": 5 \n, \"m\": true\t}, ");
        buf_puts(&c, at);
        t = tok_load_buffer(c.s, c.n, "spaced.json");
        free(c.s);
    }
    TEST_COND("JSON with whitespace everywhere and scalars before '}' loads", ok && t != NULL);
    if (t) {
        int32_t want[] = { id_of(t, "hello"), id_of(t, " world") };
        TEST_COND("... and encodes as before", encode_is(t, "hello world", false, want, 2));
    } else {
        printf("      error: %s\n", lm_last_error());
    }
    tok_free(t);
    free(b.s);
}

static void test_load_paths(void)
{
    struct spec sp = { 0 };
    char *json = make_json(&sp);
    char *file = write_file("tokenizer.json", json, strlen(json));
    struct tok *a = tok_load(file), *b = tok_load(tmpdir);
    TEST_COND("tok_load of a tokenizer.json path", a != NULL);
    TEST_COND("tok_load of a directory holding tokenizer.json", b != NULL);
    tok_free(a);
    tok_free(b);
    unlink(file);
    free(file);
    free(json);
    TEST_COND("tok_load of a directory without tokenizer.json fails naming it",
              tok_load(tmpdir) == NULL && strstr(lm_last_error(), "no tokenizer.json"));
    TEST_COND("tok_load of a missing file fails", tok_load("/nonexistent/tokenizer.json") == NULL &&
                                                  strstr(lm_last_error(), "/nonexistent"));
}

/* ===== Rejections ===== */

/* Replaces the first `from` in a valid tokenizer's JSON with `to`. */
static char *mutate(const struct spec *sp, const char *from, const char *to)
{
    char *json = make_json(sp);
    char *at = strstr(json, from);
    if (!at) {
        printf("      (test bug: '%s' not found)\n", from);
        return json;
    }
    size_t n = strlen(json), fl = strlen(from), tl = strlen(to);
    char *out = malloc(n - fl + tl + 1);
    if (!out)
        abort();
    memcpy(out, json, (size_t)(at - json));
    memcpy(out + (at - json), to, tl);
    strcpy(out + (at - json) + tl, at + fl);
    free(json);
    return out;
}

static void reject(const char *what, const char *json, size_t len, const char *expect)
{
    char descr[256];
    lm_clear_error();
    struct tok *t = tok_load_buffer(json, len, "tokenizer.json");
    bool ok = t == NULL && strstr(lm_last_error(), expect) != NULL &&
              strncmp(lm_last_error(), "tokenizer.json", 14) == 0;
    if (*expect)
        snprintf(descr, sizeof(descr), "rejects %s (\"...%s...\")", what, expect);
    else
        snprintf(descr, sizeof(descr), "rejects %s", what);
    TEST_COND(descr, ok);
    if (!ok)
        printf("      error was: %s\n", lm_last_error());
    tok_free(t);
}

static void reject_mut(const char *what, const struct spec *sp, const char *from, const char *to,
                       const char *expect)
{
    char *json = mutate(sp, from, to);
    reject(what, json, strlen(json), expect);
    free(json);
}

static void test_rejections(void)
{
    struct spec sp = { 0 }, str = { .string_merges = true }, add = { .added = added_tokens };
    reject("text that is not JSON", "hello", 5, "invalid JSON");
    reject("an empty file", "", 0, "empty");
    reject("a JSON array", "[1,2]", 5, "JSON object");
    reject("truncated JSON", "{\"model\":{\"vocab\":{\"a\":0", 24, "invalid JSON");
    reject("invalid UTF-8", "{\"model\":\xFF}", 11, "invalid UTF-8 at byte 9");
    reject("a file without model", "{\"normalizer\":null}", 19, "no \"model\"");
    reject("a WordPiece model",
           "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", 46,
           "model type 'WordPiece' is not supported");
    reject("a Unigram model (vocab is a list)",
           "{\"model\":{\"vocab\":[[\"a\",-1.0]],\"type\":\"Unigram\"}}", 49,
           "model type 'Unigram' is not supported");
    reject_mut("a model without merges", &sp, "\"merges\":[", "\"merges_\":[", "no \"merges\"");
    reject_mut("a model without vocab", &sp, "\"vocab\":{", "\"vocab_\":{", "no \"vocab\"");
    reject_mut("merges referencing unknown tokens", &sp, "[\"h\",\"e\"]", "[\"h\",\"zz\"]",
               "\"zz\" is not in the vocabulary");
    reject_mut("a merge whose result is not in the vocabulary", &sp, "[\"h\",\"e\"]",
               "[\"h\",\"h\"]", "merged token \"hh\" is not in the vocabulary");
    reject_mut("a string merge with two spaces", &str, "\"h e\"", "\"h e l\"",
               "not two tokens separated by one space");
    reject_mut("mixed merges formats", &sp, "[\"l\",\"l\"]", "\"l l\"", "must be a pair");
    reject_mut("a vocab id that is a string", &sp, "\"!\":33", "\"!\":\"0\"",
               "integer in [0, 2^31)");
    reject_mut("a negative vocab id", &sp, "\"!\":33", "\"!\":-1", "integer in [0, 2^31)");
    reject_mut("a fractional vocab id", &sp, "\"!\":33", "\"!\":0.5", "integer in [0, 2^31)");
    reject_mut("a huge vocab id", &sp, "\"!\":33", "\"!\":99999999999", "integer in [0, 2^31)");
    reject_mut("two tokens with one id", &sp, "\"!\":33", "\"!\":34", "gives id 34 to both");
    reject_mut("vocab that is not an object", &sp, "\"vocab\":{", "\"vocab\":[1],\"x\":{",
               "model.vocab must be an object");
    reject_mut("merges that are not an array", &sp, "\"merges\":[", "\"merges\":7,\"x\":[",
               "model.merges must be an array, not a number");
    reject_mut("added_tokens that is not an array", &add, "\"added_tokens\":[",
               "\"added_tokens\":7,\"x\":[", "added_tokens must be an array, not a number");
    reject_mut("a boolean flag that is a string", &add, "\"special\":true", "\"special\":\"yes\"",
               "added_tokens[0].special must be a boolean");
    reject_mut("an added token without content", &add, "\"content\":\"<|end|>\",", "",
               "added_tokens[0].content must be a string");
    reject_mut("an unsupported pre-tokenizer", &sp, qwen_pre,
               "{\"type\":\"Metaspace\",\"replacement\":\"_\"}",
               "pre_tokenizer type 'Metaspace' is not supported");
    reject_mut("an unsupported normalizer", &sp, "\"normalizer\":null",
               "\"normalizer\":{\"type\":\"BertNormalizer\"}",
               "normalizer type 'BertNormalizer' is not supported");
    reject_mut("an unsupported decoder", &sp, "\"decoder\":{\"type\":\"ByteLevel\"",
               "\"decoder\":{\"type\":\"WordPiece\"", "decoder type 'WordPiece' is not supported");
    reject_mut("a pre-tokenizer without ByteLevel", &sp, qwen_pre,
               "{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Isolated\"}",
               "no ByteLevel step");
    reject_mut("a regex that does not compile", &sp, "(?i:'s", "(?i:'s(", "does not compile");
    reject_mut("an unknown Split behavior", &sp, "\"Isolated\"", "\"Sideways\"",
               "behavior 'Sideways'");
    reject_mut("BPE dropout", &sp, "\"dropout\":null", "\"dropout\":0.1", "dropout");
    reject_mut("an unk_token outside the vocabulary", &sp, "\"unk_token\":null",
               "\"unk_token\":\"<unk>\"", "unk_token \"<unk>\" is not in the vocabulary");
    reject_mut("a continuing_subword_prefix", &sp, "\"continuing_subword_prefix\":\"\"",
               "\"continuing_subword_prefix\":\"##\"", "continuing_subword_prefix");
    {
        char *json = make_json(&sp);
        size_t n = strlen(json);
        char *more = malloc(n + 3);
        memcpy(more, json, n);
        memcpy(more + n, " x", 3);
        reject("data after the top-level object", more, n + 2, "data after the top-level object");
        reject("a file cut in the middle", json, n / 2, "");
        free(more);
        free(json);
    }
    reject_mut("a lone surrogate escape", &sp, "\"!\":33", "\"\\udc00\":0", "surrogate");
    reject_mut("a \\u0000 escape", &sp, "\"!\":33", "\"\\u0000\":0", "U+0000");
    reject_mut("an empty vocab token", &sp, "\"!\":33", "\"\":0", "empty token");
    reject_mut("model given twice", &sp, "\"model\":{", "\"model\":{},\"model\":{", "twice");
    reject_mut("the same token twice in the vocab", &sp, "\"\\\"\":34", "\"!\":34", "twice");
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/ms_test_tokenizer_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_merges_formats();
    test_added_tokens();
    test_ignore_merges();
    test_normalizer();
    test_roundtrip();
    test_stream();
    test_post_processor();
    test_threads();
    test_json_layout();
    test_load_paths();
    test_rejections();
    rmdir(tmpdir);
    return test_report();
}

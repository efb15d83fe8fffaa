#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "fsutil.h"
#include "lm_error.h"
#include "utf8.h"
#include "tokenizer_json.h"

/* ===== Data ===== */

enum {
    TOK_ENTRY_VOCAB   = 1, /* in model.vocab: BPE may produce it */
    TOK_ENTRY_ADDED   = 2, /* in added_tokens */
    TOK_ENTRY_SPECIAL = 4, /* an added token marked special */
};

/* What an id stands for. text == NULL: no token has this id. */
struct tok_entry {
    const char *text;   /* as written in the file, borrowed from the tok_json */
    uint32_t    len;
    uint8_t     flags;
};

enum {
    ADDED_SPECIAL     = 1,
    ADDED_SINGLE_WORD = 2,
    ADDED_LSTRIP      = 4,
    ADDED_RSTRIP      = 8,
};

struct added_pat {
    const char *s;      /* the text to look for */
    uint32_t    len;
    int32_t     id;
    uint8_t     flags;
};

/* Added tokens to find in text, sorted by first byte and then by length,
 * longest first, so that the first hit at a position is the longest. */
struct added_set {
    struct added_pat *pats;
    size_t            n;
    uint32_t          first[257]; /* pats[first[b] .. first[b+1]) start with byte b */
};

struct pretok_step {
    enum tok_json_pretok_kind    kind;
    pcre2_code                  *re;       /* SPLIT, and BYTE_LEVEL with use_regex */
    enum tok_json_split_behavior behavior;
    bool                         invert;
    bool                         add_prefix_space;
};

/* A slot of the text -> id table. The first bytes of the text are kept in
 * the slot so that most lookups (tokens of up to 8 bytes) never leave the
 * table: loading Qwen looks up 450,000 strings. */
struct str_slot {
    uint32_t id1;       /* id + 1; 0 = empty */
    uint32_t len : 31;
    uint32_t in_vocab : 1;  /* TOK_ENTRY_VOCAB, kept here to save a cache miss */
    char     head[8];   /* the first min(len, 8) bytes, zero-padded */
};

struct merge_slot {
    uint64_t key;       /* ((left << 32) | right) + 1; 0 = empty */
    uint32_t rank;
    int32_t  new_id;
};

struct tok {
    struct tok_json  *json;      /* owns the strings the entries point to */
    size_t            n_ids;
    struct tok_entry *entries;   /* [n_ids] */

    struct str_slot  *str_slots; /* token text -> id */
    size_t            str_mask;
    struct merge_slot *merge_slots;
    size_t            merge_mask;

    /* How BPE starts on each byte: the id of its byte-level character, or
     * byte-fallback ids, or nothing (then unk or dropped, as HF does). */
    int32_t           byte_id[256];
    int32_t           byte_fb[256][2];
    uint8_t           byte_fb_n[256];
    int32_t           unk_id;
    bool              fuse_unk;
    bool              ignore_merges;

    enum tok_json_norm *norms;   /* borrowed from json */
    size_t            n_norms;
    struct pretok_step *steps;
    size_t            n_steps;

    struct added_set  added_raw;  /* normalized=false: matched on the raw text */
    struct added_set  added_norm; /* normalized=true: matched after normalizing */
    char            **norm_texts; /* normalized contents of added_norm (owned) */
    size_t            n_norm_texts;

    int32_t           bos_id;
    int32_t          *added_ids;  /* the id of each json->added[i] */
};

/* ===== UTF-8 and the GPT-2 byte alphabet ===== */

static uint32_t byte_to_cp[256];
static int16_t  cp_to_byte[324]; /* -1 where the code point is not in the alphabet */
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes take U+0100.. in byte order. */
static void byte_map_init(void)
{
    for (int i = 0; i < 324; i++)
        cp_to_byte[i] = -1;
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                         (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : next++;
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

/* For a buffer that may end inside a character: how many bytes at s form
 * the longest prefix of some valid sequence (1..3), used to tell "cut
 * short" from "invalid". Returns 0 when even s[0] cannot start one. */
static size_t utf8_partial_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    size_t i = 1;
    while (i < n && i < need) {
        unsigned x = s[i];
        if (i == 1 ? (x < lo || x > hi) : ((x & 0xC0) != 0x80))
            break;
        i++;
    }
    return i;
}

/* Decodes the (valid) sequence at s. */
static uint32_t utf8_decode(const unsigned char *s, size_t *len)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    if (c < 0xE0) {
        *len = 2;
        return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    }
    if (c < 0xF0) {
        *len = 3;
        return ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    }
    *len = 4;
    return ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point that ends s[0..n) (valid UTF-8, n > 0). */
static uint32_t utf8_last(const unsigned char *s, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    size_t len;
    return utf8_decode(s + i, &len);
}

/* Unicode White_Space: what `\s` means to Oniguruma and to Rust's regex,
 * the engines Hugging Face uses. */
static bool is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Rust regex's Unicode `\w`: Alphabetic, marks, decimal digits, connector
 * punctuation, joiners (Nl and the circled letters stand in for the
 * Other_Alphabetic symbols). */
static bool is_word_char(uint32_t c)
{
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9);
    }
}

/* ===== Hash tables ===== */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Lookups made while loading go in blocks of this many (see build_ids). */
#define LOAD_BLOCK 32

static size_t table_size_for(size_t n)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    return cap;
}

static void str_head(const char *s, size_t n, char head[8])
{
    memset(head, 0, 8);
    memcpy(head, s, n < 8 ? n : 8);
}

#if defined(__GNUC__)
#define TOK_PREFETCH(p) __builtin_prefetch(p)
#else
#define TOK_PREFETCH(p) ((void)(p))
#endif

/* A token by text (h = hash_bytes of it): any token, or (vocab_only) only
 * one of the BPE model's own vocabulary. -1 when there is none. */
static int32_t str_find_h(const struct tok *t, const char *s, size_t n, uint64_t h,
                          bool vocab_only)
{
    char head[8];
    str_head(s, n, head);
    for (size_t i = h & t->str_mask;; i = (i + 1) & t->str_mask) {
        const struct str_slot *v = &t->str_slots[i];
        if (!v->id1)
            return -1;
        if (v->len != n || memcmp(v->head, head, 8) != 0)
            continue;
        uint32_t id = v->id1 - 1;
        if (n <= 8 || memcmp(t->entries[id].text + 8, s + 8, n - 8) == 0)
            return vocab_only && !v->in_vocab ? -1 : (int32_t)id;
    }
}

static int32_t str_find(const struct tok *t, const char *s, size_t n, bool vocab_only)
{
    return str_find_h(t, s, n, hash_bytes(s, n), vocab_only);
}

static int32_t str_lookup(const struct tok *t, const char *s, size_t n)
{
    return str_find(t, s, n, false);
}

static int32_t vocab_lookup(const struct tok *t, const char *s, size_t n)
{
    return str_find(t, s, n, true);
}

/* Adds token `id` (its entry filled in; h = hash_bytes of its text) unless
 * a token with the same text is there: then returns that token's id, else
 * -1. */
static int32_t str_insert(struct tok *t, int32_t id, uint64_t h)
{
    const struct tok_entry *e = &t->entries[id];
    char head[8];
    str_head(e->text, e->len, head);
    size_t i = h & t->str_mask;
    for (; t->str_slots[i].id1; i = (i + 1) & t->str_mask) {
        const struct str_slot *v = &t->str_slots[i];
        if (v->len == e->len && memcmp(v->head, head, 8) == 0 &&
            (e->len <= 8 || memcmp(t->entries[v->id1 - 1].text + 8, e->text + 8, e->len - 8) == 0))
            return (int32_t)(v->id1 - 1);
    }
    struct str_slot *v = &t->str_slots[i];
    v->id1 = (uint32_t)id + 1;
    v->len = e->len & 0x7FFFFFFFu;
    v->in_vocab = (e->flags & TOK_ENTRY_VOCAB) != 0;
    memcpy(v->head, head, 8);
    return -1;
}

static uint64_t merge_key(int32_t a, int32_t b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static const struct merge_slot *merge_lookup(const struct tok *t, int32_t a, int32_t b)
{
    uint64_t key = merge_key(a, b);
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *s = &t->merge_slots[i];
        if (s->key == key)
            return s;
        if (!s->key)
            return NULL;
    }
}

/* A pair listed twice keeps its later rank, as HF's HashMap does. */
static void merge_insert(struct tok *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = merge_key(a, b);
    size_t i = hash_u64(key) & t->merge_mask;
    while (t->merge_slots[i].key && t->merge_slots[i].key != key)
        i = (i + 1) & t->merge_mask;
    t->merge_slots[i] = (struct merge_slot){ key, rank, new_id };
}

/* ===== Normalization ===== */

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

/* Runs the normalizers over all of s[0..n) (valid UTF-8) with utf8proc.
 * *out is a heap string the caller frees. */
static int normalize_all(const struct tok *t, const char *s, size_t n, char **out,
                         size_t *out_len)
{
    char *cur = NULL;
    size_t cur_len = n;
    for (size_t k = 0; k < t->n_norms; k++) {
        int opts = UTF8PROC_STABLE;
        switch (t->norms[k]) {
        case TOK_JSON_NORM_NFC:  opts |= UTF8PROC_COMPOSE; break;
        case TOK_JSON_NORM_NFD:  opts |= UTF8PROC_DECOMPOSE; break;
        case TOK_JSON_NORM_NFKC: opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
        case TOK_JSON_NORM_NFKD: opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
        }
        utf8proc_uint8_t *dst = NULL;
        const char *src = cur ? cur : s;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)src, (utf8proc_ssize_t)cur_len,
                                          &dst, (utf8proc_option_t)opts);
        free(cur);
        if (r < 0)
            return lm_err(r == UTF8PROC_ERROR_NOMEM ? LM_ENOMEM : LM_EINVAL,
                          "tokenizer: %s normalization failed: %s",
                          tok_json_norm_name(t->norms[k]), utf8proc_errmsg(r));
        cur = (char *)dst;
        cur_len = (size_t)r;
    }
    *out = cur;
    *out_len = cur_len;
    return 0;
}

/* Appends s[0..n) to the heap buffer *b (length *len, capacity *cap). */
static int append_bytes(char **b, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n > *cap) {
        size_t c = LM_MAX(*cap * 2, *len + n);
        char *p = lm_realloc_array(*b, c, 1);
        if (!p)
            return LM_ENOMEM;
        *b = p;
        *cap = c;
    }
    memcpy(*b + *len, s, n);
    *len += n;
    return 0;
}

/* Runs the normalizers over valid UTF-8. *out is NULL when the text is
 * unchanged (no normalizer, or ASCII, which all four forms leave alone),
 * else a heap string the caller frees.
 *
 * Only the stretches around non-ASCII characters go through utf8proc: no
 * normal form composes, decomposes or reorders across an ASCII character
 * (ASCII has combining class 0 and is never the second half of a
 * composition), so the text can be cut before any ASCII character. The
 * ASCII character just before a non-ASCII run goes with it, as it may be
 * the base of a combining mark. */
static int normalize(const struct tok *t, const char *s, size_t n, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = n;
    if (!t->n_norms || is_ascii(s, n))
        return 0;
    char *b = NULL;
    size_t len = 0, cap = n + n / 8 + 16;
    if (!(b = lm_malloc(cap)))
        return LM_ENOMEM;
    size_t i = 0;
    int rc = 0;
    while (!rc && i < n) {
        size_t j = i;
        while (j < n && (unsigned char)s[j] < 0x80)
            j++;
        size_t start = j < n && j > i ? j - 1 : j;
        if ((rc = append_bytes(&b, &len, &cap, s + i, start - i)) || j == n)
            break;
        size_t e = j;
        while (e < n && (unsigned char)s[e] >= 0x80)
            e++;
        char *norm = NULL;
        size_t norm_len = 0;
        if (!(rc = normalize_all(t, s + start, e - start, &norm, &norm_len)))
            rc = append_bytes(&b, &len, &cap, norm, norm_len);
        free(norm);
        i = e;
    }
    if (rc) {
        free(b);
        return rc;
    }
    *out = b;
    *out_len = len;
    return 0;
}

/* ===== Regular expressions ===== */

/* Rewrites an Oniguruma pattern for PCRE2. Both read \p{L}, (?i:...),
 * lookahead and classes alike; they differ on `\s`, which PCRE2 (with UCP)
 * widens to U+180E while Oniguruma means exactly White_Space, so `\s` and
 * `\S` become the property. Caller frees. */
static char *onig_to_pcre2(const char *pat)
{
    size_t n = strlen(pat), extra = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (pat[i] == '\\') {
            if (pat[i + 1] == 's' || pat[i + 1] == 'S')
                extra += 14;
            i++;
        }
    char *out = lm_malloc(n + extra + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (pat[i] == '\\' && i + 1 < n) {
            char c = pat[i + 1];
            if (c == 's' || c == 'S') {
                const char *rep = c == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
                memcpy(out + o, rep, 15);
                o += 15;
            } else {
                out[o++] = '\\';
                out[o++] = c;
            }
            i++;
            continue;
        }
        out[o++] = pat[i];
    }
    out[o] = '\0';
    return out;
}

static pcre2_code *regex_compile(const char *label, const char *pattern, bool is_regex)
{
    char *src = is_regex ? onig_to_pcre2(pattern) : lm_strdup(pattern);
    if (!src)
        return NULL;
    int errcode;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | (is_regex ? PCRE2_UCP : PCRE2_LITERAL);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &errcode, &erroff,
                                   NULL);
    free(src);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof(msg));
        lm_err(LM_EFORMAT, "%s: pre_tokenizer regex \"%.80s\" does not compile (offset %zu): %s",
               label, pattern, (size_t)erroff, (const char *)msg);
        return NULL;
    }
    /* JIT is an optimisation only: when it is unavailable pcre2_match
     * interprets the pattern. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* GPT-2's pattern, used by ByteLevel when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ===== Scratch space of one encode call ===== */

struct span {
    size_t start, end;
    bool   is_match;
};

struct sym {
    int32_t  id;
    int32_t  prev, next;
    uint32_t len;       /* bytes covered; 0 once merged into its left neighbour */
};

struct heap_item {
    uint32_t rank;
    uint32_t pos;
    int32_t  new_id;
};

struct scratch {
    pcre2_match_data *md;
    struct sym       *syms;
    size_t            cap_syms;
    struct heap_item *heap;
    size_t            cap_heap;
    char             *buf;       /* mapped piece for ignore_merges */
    size_t            cap_buf;
    char            **owned;     /* strings made by the pre-tokenizer */
    size_t            n_owned, cap_owned;
    struct piece_cache *cache;   /* NULL until the text is long enough */
};

/* ===== Cache of BPE results within one encode call =====
 *
 * Text repeats its words, and BPE on a piece costs far more than a hash
 * lookup, so a long text keeps the ids of the pieces it has seen (HF keeps
 * such a cache too). It lives only for one call, so the tokenizer stays
 * read-only and needs no lock. When full it stops growing: the words seen
 * first are the frequent ones. */

#define CACHE_MAX_PIECE   48
#define CACHE_MAX_ENTRIES (1u << 15)

struct cache_entry {
    uint64_t hash;
    uint32_t key_off, key_len;
    uint32_t ids_off, n_ids;
};

struct piece_cache {
    uint32_t           slots[2 * CACHE_MAX_ENTRIES]; /* entry index + 1; 0 = empty */
    struct cache_entry *entries;
    size_t             n_entries, cap_entries;
    char              *keys;
    size_t             n_keys, cap_keys;
    int32_t           *ids;
    size_t             n_ids, cap_ids;
};

/* Grows the array whose pointer is at `arr` to hold at least `need`
 * elements of `size` bytes. */
static int grow(void *arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *old;
    memcpy(&old, arr, sizeof(old));
    void *p = lm_realloc_array(old, c, size);
    if (!p)
        return LM_ENOMEM;
    memcpy(arr, &p, sizeof(p));
    *cap = c;
    return 0;
}

static void scratch_free_owned(struct scratch *sc)
{
    for (size_t i = 0; i < sc->n_owned; i++)
        free(sc->owned[i]);
    sc->n_owned = 0;
}

static void scratch_deinit(struct scratch *sc)
{
    scratch_free_owned(sc);
    if (sc->md)
        pcre2_match_data_free(sc->md);
    free(sc->syms);
    free(sc->heap);
    free(sc->buf);
    free(sc->owned);
    if (sc->cache) {
        free(sc->cache->entries);
        free(sc->cache->keys);
        free(sc->cache->ids);
        free(sc->cache);
    }
}

/* ===== Pre-tokenization =====
 *
 * The steps run depth first: each piece a step cuts off goes through the
 * next steps and BPE before the step looks for its next match. This keeps
 * memory flat however long the text is (a step that applies all at once
 * would hold a span for every word of a book). */

static int bpe_cached(const struct tok *t, struct scratch *sc, const unsigned char *s, size_t n,
                      struct tok_ids *out);
static int pretok_run(const struct tok *t, struct scratch *sc, size_t k, const char *p, size_t n,
                      struct tok_ids *out);

/* Where the spans of one Split go: straight on for Isolated and Removed,
 * into `buf` for the behaviors that join neighbouring spans. */
struct span_sink {
    const struct tok *t;
    struct scratch   *sc;
    size_t            k;       /* the step doing the split */
    const char       *base;
    enum tok_json_split_behavior behavior;
    bool              invert;
    struct tok_ids   *out;
    struct span      *buf;
    size_t            n, cap;
};

static int sink_span(struct span_sink *sk, size_t start, size_t end, bool is_match)
{
    if (sk->invert)
        is_match = !is_match;
    switch (sk->behavior) {
    case TOK_JSON_SPLIT_ISOLATED:
        return pretok_run(sk->t, sk->sc, sk->k + 1, sk->base + start, end - start, sk->out);
    case TOK_JSON_SPLIT_REMOVED:
        return is_match ? 0
                        : pretok_run(sk->t, sk->sc, sk->k + 1, sk->base + start, end - start,
                                     sk->out);
    default: {
        int rc = grow(&sk->buf, &sk->cap, sk->n + 1, sizeof(*sk->buf));
        if (rc)
            return rc;
        sk->buf[sk->n++] = (struct span){ start, end, is_match };
        return 0;
    }
    }
}

/* HF's find_matches over Oniguruma's find_iter on s[0..n): spans covering
 * the text, the regex matches marked. An empty match right after the
 * previous match is skipped, and the search moves on by one character
 * after an empty match. */
static int regex_spans(struct span_sink *sk, const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = sk->sc->md;
    size_t prev = 0, off = 0;
    bool have_last = false;
    size_t last_end = 0;
    int rc;
    while (off <= n) {
        int r = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r == PCRE2_ERROR_JIT_STACKLIMIT)
            r = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (r == PCRE2_ERROR_NOMATCH)
            break;
        if (r < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(r, msg, sizeof(msg));
            return lm_err(LM_EUNSUPPORTED, "tokenizer: pre_tokenizer regex failed at byte %zu: %s",
                          off, (const char *)msg);
        }
        /* read the match before the next steps reuse the match data */
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (!(ms == me && have_last && last_end == me)) {
            if (prev != ms && (rc = sink_span(sk, prev, ms, false)))
                return rc;
            if ((rc = sink_span(sk, ms, me, true)))
                return rc;
            prev = me;
            have_last = true;
            last_end = me;
        }
        if (me > off) {
            off = me;
        } else {
            if (off >= n)
                break;
            size_t k = lm_utf8_seq_len((const unsigned char *)s + off, n - off);
            off += k ? k : 1;
        }
    }
    if (prev != n)
        return sink_span(sk, prev, n, false);
    return 0;
}

/* HF's Split with one of its five behaviors on one piece. */
static int split_run(const struct tok *t, struct scratch *sc, size_t k, const pcre2_code *re,
                     enum tok_json_split_behavior behavior, bool invert, const char *p, size_t n,
                     struct tok_ids *out)
{
    struct span_sink sk = { .t = t, .sc = sc, .k = k, .base = p, .behavior = behavior,
                            .invert = invert, .out = out };
    int rc = regex_spans(&sk, re, p, n);
    if (rc || behavior == TOK_JSON_SPLIT_ISOLATED || behavior == TOK_JSON_SPLIT_REMOVED) {
        free(sk.buf);
        return rc;
    }
    /* Fold the spans as HF does, reusing the array. */
    struct span *sp = sk.buf;
    size_t cnt = sk.n, m = 0;
    bool previous_match = false;
    if (behavior == TOK_JSON_SPLIT_MERGED_WITH_PREVIOUS) {
        for (size_t i = 0; i < cnt; i++) {
            bool is_match = sp[i].is_match;
            if (is_match && !previous_match && m > 0)
                sp[m - 1].end = sp[i].end;
            else
                sp[m++] = sp[i];
            previous_match = is_match;
        }
    } else if (behavior == TOK_JSON_SPLIT_MERGED_WITH_NEXT) {
        /* folded from the right: a match joins the span after it */
        size_t lo = cnt;
        for (size_t i = cnt; i-- > 0;) {
            bool is_match = sp[i].is_match;
            if (is_match && !previous_match && lo < cnt)
                sp[lo].start = sp[i].start;
            else
                sp[--lo] = sp[i];
            previous_match = is_match;
        }
        memmove(sp, sp + lo, (cnt - lo) * sizeof(*sp));
        m = cnt - lo;
    } else { /* TOK_JSON_SPLIT_CONTIGUOUS */
        for (size_t i = 0; i < cnt; i++) {
            bool is_match = sp[i].is_match;
            if (is_match == previous_match && m > 0)
                sp[m - 1].end = sp[i].end;
            else
                sp[m++] = sp[i];
            previous_match = is_match;
        }
    }
    for (size_t i = 0; !rc && i < m; i++)
        rc = pretok_run(t, sc, k + 1, p + sp[i].start, sp[i].end - sp[i].start, out);
    free(sp);
    return rc;
}

/* Pre-tokenizer step k (and all after it, then BPE) on one piece. Empty
 * pieces vanish, as in HF. */
static int pretok_run(const struct tok *t, struct scratch *sc, size_t k, const char *p, size_t n,
                      struct tok_ids *out)
{
    if (n == 0)
        return 0;
    if (k == t->n_steps)
        return bpe_cached(t, sc, (const unsigned char *)p, n, out);
    const struct pretok_step *st = &t->steps[k];
    if (st->kind == TOK_JSON_PRETOK_SPLIT)
        return split_run(t, sc, k, st->re, st->behavior, st->invert, p, n, out);
    /* ByteLevel: the byte mapping itself happens in BPE */
    if (st->add_prefix_space && p[0] != ' ') {
        int rc = grow(&sc->owned, &sc->cap_owned, sc->n_owned + 1, sizeof(*sc->owned));
        if (rc)
            return rc;
        char *s = lm_malloc(n + 1);
        if (!s)
            return LM_ENOMEM;
        s[0] = ' ';
        memcpy(s + 1, p, n);
        sc->owned[sc->n_owned++] = s;
        p = s;
        n++;
    }
    if (!st->re)
        return pretok_run(t, sc, k + 1, p, n, out);
    return split_run(t, sc, k, st->re, TOK_JSON_SPLIT_ISOLATED, false, p, n, out);
}

/* ===== BPE ===== */

static bool heap_less(const struct heap_item *a, const struct heap_item *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(struct scratch *sc, size_t *n, struct heap_item it)
{
    int rc = grow(&sc->heap, &sc->cap_heap, *n + 1, sizeof(*sc->heap));
    if (rc)
        return rc;
    struct heap_item *h = sc->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&it, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = it;
    return 0;
}

static struct heap_item heap_pop(struct scratch *sc, size_t *n)
{
    struct heap_item *h = sc->heap;
    struct heap_item top = h[0];
    struct heap_item last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static int add_sym(struct scratch *sc, size_t *n, int32_t id, uint32_t len)
{
    int rc = grow(&sc->syms, &sc->cap_syms, *n + 1, sizeof(*sc->syms));
    if (rc)
        return rc;
    int32_t i = (int32_t)*n;
    sc->syms[i] = (struct sym){ id, i - 1, -1, len };
    if (i > 0)
        sc->syms[i - 1].next = i;
    (*n)++;
    return 0;
}

/* BPE on one piece of raw bytes, appending ids to out. Mirrors HF's
 * merge_word + Word::merge_all: one symbol per byte (its byte-level
 * character), then a min-heap of candidate merges ordered by (rank,
 * position); an entry is stale when the pair now at its position no longer
 * merges into the same token. */
static int bpe_piece(const struct tok *t, struct scratch *sc, const unsigned char *s, size_t n,
                     struct tok_ids *out)
{
    int rc;
    if (n >= (size_t)INT32_MAX)
        return lm_err(LM_EINVAL, "tokenizer: a piece of %zu bytes is too long to encode", n);
    if (t->ignore_merges) {
        if ((rc = grow(&sc->buf, &sc->cap_buf, 2 * n, 1)))
            return rc;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += utf8_encode(byte_to_cp[s[i]], sc->buf + m);
        int32_t id = vocab_lookup(t, sc->buf, m);
        if (id >= 0)
            return tok_ids_push(out, id);
    }

    size_t ns = 0;
    int32_t unk_pending = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned b = s[i];
        if (t->byte_id[b] >= 0 || t->byte_fb_n[b]) {
            if (unk_pending >= 0 && (rc = add_sym(sc, &ns, unk_pending, unk_len)))
                return rc;
            unk_pending = -1;
            if (t->byte_id[b] >= 0) {
                rc = add_sym(sc, &ns, t->byte_id[b], 1);
            } else {
                rc = 0;
                for (unsigned k = 0; !rc && k < t->byte_fb_n[b]; k++)
                    rc = add_sym(sc, &ns, t->byte_fb[b][k], 1);
            }
            if (rc)
                return rc;
        } else if (t->unk_id >= 0) {
            if (unk_pending >= 0 && t->fuse_unk) {
                unk_len++;
            } else {
                if (unk_pending >= 0 && (rc = add_sym(sc, &ns, unk_pending, unk_len)))
                    return rc;
                unk_pending = t->unk_id;
                unk_len = 1;
            }
        }
        /* else: no token and no unk: HF drops the character */
    }
    if (unk_pending >= 0 && (rc = add_sym(sc, &ns, unk_pending, unk_len)))
        return rc;

    struct sym *y = sc->syms;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const struct merge_slot *m = merge_lookup(t, y[i].id, y[i + 1].id);
        if (m && (rc = heap_push(sc, &nh, (struct heap_item){ m->rank, (uint32_t)i, m->new_id })))
            return rc;
    }
    while (nh) {
        struct heap_item top = heap_pop(sc, &nh);
        struct sym *cur = &y[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        struct sym *right = &y[cur->next];
        const struct merge_slot *m = merge_lookup(t, cur->id, right->id);
        if (!m || m->new_id != top.new_id)
            continue;
        cur->id = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0)
            y[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            const struct merge_slot *pm = merge_lookup(t, y[cur->prev].id, cur->id);
            if (pm && (rc = heap_push(sc, &nh, (struct heap_item){ pm->rank, (uint32_t)cur->prev,
                                                                   pm->new_id })))
                return rc;
        }
        if (cur->next >= 0) {
            const struct merge_slot *nm = merge_lookup(t, cur->id, y[cur->next].id);
            if (nm && (rc = heap_push(sc, &nh, (struct heap_item){ nm->rank, top.pos,
                                                                   nm->new_id })))
                return rc;
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (y[i].len && (rc = tok_ids_push(out, y[i].id)))
            return rc;
    return 0;
}

/* bpe_piece through the call's cache. */
static int bpe_cached(const struct tok *t, struct scratch *sc, const unsigned char *s, size_t n,
                      struct tok_ids *out)
{
    struct piece_cache *c = sc->cache;
    if (!c || n > CACHE_MAX_PIECE)
        return bpe_piece(t, sc, s, n, out);
    uint64_t h = hash_bytes((const char *)s, n);
    size_t mask = LM_ARRAY_SIZE(c->slots) - 1, i = h & mask;
    for (; c->slots[i]; i = (i + 1) & mask) {
        const struct cache_entry *e = &c->entries[c->slots[i] - 1];
        if (e->hash == h && e->key_len == n && memcmp(c->keys + e->key_off, s, n) == 0) {
            for (uint32_t k = 0; k < e->n_ids; k++) {
                int rc = tok_ids_push(out, c->ids[e->ids_off + k]);
                if (rc)
                    return rc;
            }
            return 0;
        }
    }
    size_t first = out->n;
    int rc = bpe_piece(t, sc, s, n, out);
    if (rc || c->n_entries >= CACHE_MAX_ENTRIES)
        return rc;
    size_t n_new = out->n - first;
    if ((rc = grow(&c->entries, &c->cap_entries, c->n_entries + 1, sizeof(*c->entries))) ||
        (rc = grow(&c->keys, &c->cap_keys, c->n_keys + n, 1)) ||
        (rc = grow(&c->ids, &c->cap_ids, c->n_ids + n_new, sizeof(*c->ids))))
        return rc;
    c->entries[c->n_entries] = (struct cache_entry){
        h, (uint32_t)c->n_keys, (uint32_t)n, (uint32_t)c->n_ids, (uint32_t)n_new };
    memcpy(c->keys + c->n_keys, s, n);
    memcpy(c->ids + c->n_ids, out->data + first, n_new * sizeof(*c->ids));
    c->n_keys += n;
    c->n_ids += n_new;
    c->slots[i] = (uint32_t)++c->n_entries;
    return 0;
}

/* ===== Added tokens ===== */

/* Leftmost-longest occurrence of any pattern in s[from..n). */
static const struct added_pat *added_find(const struct added_set *set, const char *s, size_t n,
                                          size_t from, size_t *at)
{
    if (!set->n)
        return NULL;
    for (size_t i = from; i < n; i++) {
        unsigned b = (unsigned char)s[i];
        for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
            const struct added_pat *p = &set->pats[k];
            if (p->len <= n - i && memcmp(s + i, p->s, p->len) == 0) {
                *at = i;
                return p;
            }
        }
    }
    return NULL;
}

/* Callback for the text between added tokens. */
typedef int (*gap_fn)(const struct tok *t, struct scratch *sc, const char *s, size_t n,
                      bool allow_special, struct tok_ids *out);

/* HF's AddedVocabulary::find_matches on s[0..n): the matches are found
 * non-overlapping, left to right; a match that is not accepted (a special
 * token when they are not allowed, a single_word token inside a word) is
 * still consumed. lstrip/rstrip widen an accepted match over the
 * whitespace around it. Text between matches goes to `gap`. */
static int split_added(const struct tok *t, struct scratch *sc, const struct added_set *set,
                       const char *s, size_t n, bool allow_special, gap_fn gap,
                       struct tok_ids *out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t start_offset = 0, from = 0, at;
    const struct added_pat *p;
    int rc;
    while ((p = added_find(set, s, n, from, &at))) {
        size_t start = at, stop = at + p->len;
        from = stop;
        if ((p->flags & ADDED_SPECIAL) && !allow_special)
            continue;
        if (p->flags & ADDED_SINGLE_WORD) {
            bool start_space = start == 0 || !is_word_char(utf8_last(u, start));
            size_t len;
            bool stop_space = stop == n || !is_word_char(utf8_decode(u + stop, &len));
            if (!start_space || !stop_space)
                continue;
        }
        if (start < start_offset)
            continue;
        if (p->flags & ADDED_LSTRIP) {
            size_t ns = start;
            while (ns > start_offset) {
                size_t k = ns - 1;
                while (k > 0 && (u[k] & 0xC0) == 0x80)
                    k--;
                size_t len;
                if (!is_white_space(utf8_decode(u + k, &len)))
                    break;
                ns = k;
            }
            start = ns;
        }
        if (p->flags & ADDED_RSTRIP) {
            while (stop < n) {
                size_t len;
                uint32_t c = utf8_decode(u + stop, &len);
                if (!is_white_space(c))
                    break;
                stop += len;
            }
        }
        if (start_offset < start && (rc = gap(t, sc, s + start_offset, start - start_offset,
                                              allow_special, out)))
            return rc;
        if ((rc = tok_ids_push(out, p->id)))
            return rc;
        start_offset = stop;
    }
    if (start_offset < n)
        return gap(t, sc, s + start_offset, n - start_offset, allow_special, out);
    return 0;
}

/* ===== Encoding ===== */

/* Normalized text with the normalized added tokens taken out: pre-tokenize
 * and BPE. */
static int encode_plain(const struct tok *t, struct scratch *sc, const char *s, size_t n,
                        bool allow_special, struct tok_ids *out)
{
    (void)allow_special;
    int rc = pretok_run(t, sc, 0, s, n, out);
    scratch_free_owned(sc);
    return rc;
}

/* Raw text between non-normalized added tokens: normalize, then look for
 * the normalized added tokens. */
static int encode_gap(const struct tok *t, struct scratch *sc, const char *s, size_t n,
                      bool allow_special, struct tok_ids *out)
{
    char *norm;
    size_t norm_len;
    int rc = normalize(t, s, n, &norm, &norm_len);
    if (rc)
        return rc;
    rc = split_added(t, sc, &t->added_norm, norm ? norm : s, norm_len, allow_special,
                     encode_plain, out);
    free(norm);
    return rc;
}

int tok_encode(const struct tok *t, const char *text, size_t len, bool allow_special,
               struct tok_ids *out)
{
    struct scratch sc = { 0 };
    size_t n0 = out->n;
    int rc = 0;
    if (t->n_steps) {
        sc.md = pcre2_match_data_create(2, NULL);
        if (!sc.md)
            return lm_err(LM_ENOMEM, "tokenizer: out of memory for regex match data");
    }
    /* Short texts (a prompt, a line) are not worth the cache's setup. */
    if (len >= 4096 && !(sc.cache = lm_calloc(1, sizeof(*sc.cache)))) {
        scratch_deinit(&sc);
        return LM_ENOMEM;
    }
    /* Valid UTF-8 runs take the full path; bytes that are not UTF-8 become
     * pieces of their own. */
    const unsigned char *u = (const unsigned char *)text;
    size_t i = 0;
    while (!rc && i < len) {
        size_t j = i;
        size_t k;
        while (j < len && (k = lm_utf8_seq_len(u + j, len - j)))
            j += k;
        if (j > i)
            rc = split_added(t, &sc, &t->added_raw, text + i, j - i, allow_special, encode_gap,
                             out);
        if (rc || j >= len) {
            i = j;
            break;
        }
        size_t bad = j;
        while (bad < len && !lm_utf8_seq_len(u + bad, len - bad))
            bad++;
        rc = bpe_piece(t, &sc, u + j, bad - j, out);
        i = bad;
    }
    scratch_deinit(&sc);
    if (rc)
        out->n = n0;
    return rc;
}

/* ===== ids ===== */

int tok_ids_push(struct tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = lm_realloc_array(v->data, cap, sizeof(*p));
        if (!p)
            return LM_ENOMEM;
        v->data = p;
        v->cap = cap;
    }
    v->data[v->n++] = id;
    return 0;
}

void tok_ids_free(struct tok_ids *v)
{
    if (!v)
        return;
    free(v->data);
    v->data = NULL;
    v->n = v->cap = 0;
}

/* ===== Decoding ===== */

/* The bytes of one token, HF's ByteLevel decoder: every character mapped
 * back through the byte alphabet, or, when some character is not in it,
 * the token's own UTF-8. `out` needs room for e->len bytes. */
static size_t token_bytes(const struct tok_entry *e, char *out)
{
    const unsigned char *s = (const unsigned char *)e->text;
    size_t i = 0, m = 0;
    while (i < e->len) {
        size_t len;
        uint32_t c = utf8_decode(s + i, &len);
        if (c >= 324 || cp_to_byte[c] < 0) {
            memcpy(out, e->text, e->len);
            return e->len;
        }
        out[m++] = (char)cp_to_byte[c];
        i += len;
    }
    return m;
}

static const struct tok_entry *entry_for(const struct tok *t, int32_t id)
{
    if (id < 0 || (size_t)id >= t->n_ids || !t->entries[id].text) {
        lm_err(LM_EINVAL, "tokenizer: no token has id %d (vocabulary size %zu)", (int)id,
               t->n_ids);
        return NULL;
    }
    return &t->entries[id];
}

int tok_decode(const struct tok *t, const int32_t *ids, size_t n_ids, bool skip_special,
               char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const struct tok_entry *e = entry_for(t, ids[i]);
        if (!e)
            return LM_EINVAL;
        total += e->len;
    }
    char *buf = lm_malloc(total + 1);
    if (!buf)
        return LM_ENOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const struct tok_entry *e = &t->entries[ids[i]];
        if (skip_special && (e->flags & TOK_ENTRY_SPECIAL))
            continue;
        m += token_bytes(e, buf + m);
    }
    buf[m] = '\0';
    *out = buf;
    *out_len = m;
    return 0;
}

struct tok_stream {
    const struct tok *t;
    bool   skip_special;
    unsigned char held[4];  /* start of a character still incomplete */
    size_t n_held;
    char  *buf;             /* the text returned by the last call */
    size_t cap;
};

struct tok_stream *tok_stream_new(const struct tok *t, bool skip_special)
{
    struct tok_stream *s = lm_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->t = t;
    s->skip_special = skip_special;
    return s;
}

void tok_stream_free(struct tok_stream *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s);
}

static const char replacement_char[3] = { (char)0xEF, (char)0xBF, (char)0xBD };

/* Turns in[0..n) into valid UTF-8 at out (room for 3 * n bytes): complete
 * characters are copied, each maximal invalid subpart becomes one U+FFFD
 * (from_utf8_lossy's rule). With `hold`, an incomplete character at the end
 * is not emitted; its length is returned through *held. */
static size_t lossy_utf8(const unsigned char *in, size_t n, char *out, bool hold, size_t *held)
{
    size_t i = 0, m = 0;
    *held = 0;
    while (i < n) {
        size_t k = lm_utf8_seq_len(in + i, n - i);
        if (k) {
            memcpy(out + m, in + i, k);
            m += k;
            i += k;
            continue;
        }
        size_t part = utf8_partial_len(in + i, n - i);
        if (hold && part && i + part == n) {
            *held = part;
            break;
        }
        memcpy(out + m, replacement_char, 3);
        m += 3;
        i += part ? part : 1;
    }
    return m;
}

int tok_stream_push(struct tok_stream *s, int32_t id, const char **text, size_t *len)
{
    *text = "";
    *len = 0;
    const struct tok_entry *e = entry_for(s->t, id);
    if (!e)
        return LM_EINVAL;
    if (s->skip_special && (e->flags & TOK_ENTRY_SPECIAL))
        return 0;
    size_t n = s->n_held + e->len;
    /* raw bytes first, at the end of the buffer; the output (at most 3 bytes
     * per input byte) is written from the start */
    int rc = grow(&s->buf, &s->cap, 4 * n + 1, 1);
    if (rc)
        return rc;
    unsigned char *raw = (unsigned char *)s->buf + 3 * n + 1;
    memcpy(raw, s->held, s->n_held);
    size_t nraw = s->n_held + token_bytes(e, (char *)raw + s->n_held);
    size_t held;
    size_t m = lossy_utf8(raw, nraw, s->buf, true, &held);
    memcpy(s->held, raw + nraw - held, held);
    s->n_held = held;
    s->buf[m] = '\0';
    *text = s->buf;
    *len = m;
    return 0;
}

int tok_stream_flush(struct tok_stream *s, const char **text, size_t *len)
{
    *text = "";
    *len = 0;
    if (!s->n_held)
        return 0;
    int rc = grow(&s->buf, &s->cap, 4 * s->n_held + 1, 1);
    if (rc)
        return rc;
    size_t held;
    size_t m = lossy_utf8(s->held, s->n_held, s->buf, false, &held);
    s->n_held = 0;
    s->buf[m] = '\0';
    *text = s->buf;
    *len = m;
    return 0;
}

/* ===== Queries ===== */

size_t tok_n_vocab(const struct tok *t)
{
    return t->n_ids;
}

const char *tok_id_to_token(const struct tok *t, int32_t id)
{
    if (id < 0 || (size_t)id >= t->n_ids)
        return NULL;
    return t->entries[id].text;
}

int32_t tok_token_to_id(const struct tok *t, const char *token)
{
    return str_lookup(t, token, strlen(token));
}

bool tok_is_special(const struct tok *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_ids && (t->entries[id].flags & TOK_ENTRY_SPECIAL);
}

int32_t tok_bos_id(const struct tok *t)
{
    return t->bos_id;
}

/* ===== Loading ===== */

void tok_free(struct tok *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_steps; i++)
        if (t->steps[i].re)
            pcre2_code_free(t->steps[i].re);
    free(t->steps);
    free(t->added_raw.pats);
    free(t->added_norm.pats);
    for (size_t i = 0; i < t->n_norm_texts; i++)
        free(t->norm_texts[i]);
    free(t->norm_texts);
    free(t->entries);
    free(t->added_ids);
    free(t->str_slots);
    free(t->merge_slots);
    tok_json_free(t->json);
    free(t);
}

static int cmp_added_pat(const void *a, const void *b)
{
    const struct added_pat *x = a, *y = b;
    unsigned fx = (unsigned char)x->s[0], fy = (unsigned char)y->s[0];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void added_set_index(struct added_set *set)
{
    qsort(set->pats, set->n, sizeof(*set->pats), cmp_added_pat);
    size_t k = 0;
    for (unsigned b = 0; b <= 256; b++) {
        while (k < set->n && (unsigned char)set->pats[k].s[0] < b)
            k++;
        set->first[b] = (uint32_t)k;
    }
}

/* Ids of added tokens follow Hugging Face, which ignores their "id" field:
 * a token whose text is in the vocabulary takes that token's id; the others
 * are numbered in file order from the vocabulary's size (its number of
 * entries), or one past the largest id handed out so far when that is
 * larger. In real files this gives the ids written there. */
static int build_ids(struct tok *t)
{
    const struct tok_json *j = t->json;
    int32_t max_vocab = -1;
    for (size_t i = 0; i < j->n_vocab; i++)
        max_vocab = LM_MAX(max_vocab, j->vocab[i].id);
    if (j->n_vocab == 0)
        return lm_err(LM_EFORMAT, "%s: model.vocab is empty", j->label);
    if (j->n_vocab + j->n_added >= (size_t)INT32_MAX)
        return lm_err(LM_EFORMAT, "%s: too many tokens", j->label);
    /* room for every id an added token can get */
    size_t cap = LM_MAX((size_t)max_vocab + 1, j->n_vocab) + j->n_added;
    t->entries = lm_calloc(cap, sizeof(*t->entries));
    size_t slots = table_size_for(j->n_vocab + j->n_added);
    t->str_slots = lm_calloc(slots, sizeof(*t->str_slots));
    if (!t->entries || !t->str_slots)
        return LM_ENOMEM;
    t->str_mask = slots - 1;
    t->n_ids = (size_t)max_vocab + 1;

    /* In blocks: hash a block and prefetch its slots, then insert, so that
     * the cache misses of a block overlap. */
    for (size_t base = 0; base < j->n_vocab; base += LOAD_BLOCK) {
        size_t nb = LM_MIN((size_t)LOAD_BLOCK, j->n_vocab - base);
        uint64_t h[LOAD_BLOCK];
        for (size_t k = 0; k < nb; k++) {
            h[k] = hash_bytes(j->vocab[base + k].token, j->vocab[base + k].len);
            TOK_PREFETCH(&t->str_slots[h[k] & t->str_mask]);
        }
        for (size_t k = 0; k < nb; k++) {
            const struct tok_json_vocab *v = &j->vocab[base + k];
            struct tok_entry *e = &t->entries[v->id];
            if (e->text)
                return lm_err(LM_EFORMAT, "%s: model.vocab gives id %d to both \"%s\" and "
                              "\"%s\"", j->label, (int)v->id, e->text, v->token);
            *e = (struct tok_entry){ v->token, v->len, TOK_ENTRY_VOCAB };
            int32_t other = str_insert(t, v->id, h[k]);
            if (other >= 0)
                return lm_err(LM_EFORMAT, "%s: model.vocab lists \"%s\" twice (ids %d and %d)",
                              j->label, v->token, (int)other, (int)v->id);
        }
    }
    int64_t max_added = -1;
    int64_t vocab_len = (int64_t)j->n_vocab;
    for (size_t i = 0; i < j->n_added; i++) {
        const struct tok_json_added *a = &j->added[i];
        int32_t id = str_lookup(t, a->content, a->len);
        if (id >= 0 && (t->entries[id].flags & TOK_ENTRY_ADDED))
            return lm_err(LM_EFORMAT, "%s: added_tokens lists \"%s\" twice", j->label,
                          a->content);
        if (id < 0) {
            int64_t next = max_added < 0 ? vocab_len
                         : max_added >= vocab_len ? max_added + 1 : vocab_len;
            id = (int32_t)next;
            struct tok_entry *e = &t->entries[id];
            if (e->text)
                return lm_err(LM_EFORMAT, "%s: added_tokens[%zu] \"%s\" gets id %d (Hugging "
                              "Face numbers added tokens from the vocabulary size, %zu), which "
                              "the vocabulary already gives to \"%s\"", j->label, i, a->content,
                              (int)id, j->n_vocab, e->text);
            *e = (struct tok_entry){ a->content, a->len, 0 };
            str_insert(t, id, hash_bytes(a->content, a->len));
            t->n_ids = LM_MAX(t->n_ids, (size_t)id + 1);
        }
        max_added = LM_MAX(max_added, (int64_t)id);
        t->entries[id].flags |= (uint8_t)(TOK_ENTRY_ADDED | (a->special ? TOK_ENTRY_SPECIAL : 0));
        t->added_ids[i] = id;
    }
    return 0;
}

/* Merges are resolved in blocks for the same reason as the vocabulary:
 * three lookups each (left, right, joined) into a table far larger than
 * the caches. */
static int build_merges(struct tok *t)
{
    const struct tok_json *j = t->json;
    size_t cap = table_size_for(j->n_merges);
    t->merge_slots = lm_calloc(cap, sizeof(*t->merge_slots));
    if (!t->merge_slots)
        return LM_ENOMEM;
    t->merge_mask = cap - 1;
    char *joined = NULL;
    size_t joined_cap = 0;
    int rc = 0;
    for (size_t base = 0; base < j->n_merges && !rc; base += LOAD_BLOCK) {
        size_t nb = LM_MIN((size_t)LOAD_BLOCK, j->n_merges - base);
        uint64_t ha[LOAD_BLOCK], hb[LOAD_BLOCK], hc[LOAD_BLOCK];
        size_t off[LOAD_BLOCK + 1] = { 0 };
        int32_t a[LOAD_BLOCK], b[LOAD_BLOCK], c[LOAD_BLOCK];
        for (size_t k = 0; k < nb; k++) {
            const struct tok_json_merge *m = &j->merges[base + k];
            off[k + 1] = off[k] + m->left_len + m->right_len;
        }
        if ((rc = grow(&joined, &joined_cap, off[nb], 1)))
            break;
        for (size_t k = 0; k < nb; k++) {
            const struct tok_json_merge *m = &j->merges[base + k];
            char *jk = joined + off[k];
            memcpy(jk, m->left, m->left_len);
            memcpy(jk + m->left_len, m->right, m->right_len);
            ha[k] = hash_bytes(m->left, m->left_len);
            hb[k] = hash_bytes(m->right, m->right_len);
            hc[k] = hash_bytes(jk, off[k + 1] - off[k]);
            TOK_PREFETCH(&t->str_slots[ha[k] & t->str_mask]);
            TOK_PREFETCH(&t->str_slots[hb[k] & t->str_mask]);
            TOK_PREFETCH(&t->str_slots[hc[k] & t->str_mask]);
        }
        for (size_t k = 0; k < nb; k++) {
            const struct tok_json_merge *m = &j->merges[base + k];
            size_t i = base + k, len = off[k + 1] - off[k];
            a[k] = str_find_h(t, m->left, m->left_len, ha[k], true);
            b[k] = str_find_h(t, m->right, m->right_len, hb[k], true);
            if (a[k] < 0 || b[k] < 0) {
                rc = lm_err(LM_EFORMAT, "%s: model.merges[%zu] \"%s\" \"%s\": \"%s\" is not in "
                            "the vocabulary", j->label, i, m->left, m->right,
                            a[k] < 0 ? m->left : m->right);
                break;
            }
            c[k] = str_find_h(t, joined + off[k], len, hc[k], true);
            if (c[k] < 0) {
                rc = lm_err(LM_EFORMAT, "%s: model.merges[%zu] \"%s\" \"%s\": the merged token "
                            "\"%.*s\" is not in the vocabulary", j->label, i, m->left, m->right,
                            (int)len, joined + off[k]);
                break;
            }
            TOK_PREFETCH(&t->merge_slots[hash_u64(merge_key(a[k], b[k])) & t->merge_mask]);
        }
        for (size_t k = 0; k < nb && !rc; k++)
            merge_insert(t, a[k], b[k], (uint32_t)(base + k), c[k]);
    }
    free(joined);
    return rc;
}

static int build_bytes(struct tok *t)
{
    const struct tok_json *j = t->json;
    t->unk_id = -1;
    if (j->unk_token) {
        t->unk_id = vocab_lookup(t, j->unk_token, strlen(j->unk_token));
        if (t->unk_id < 0)
            return lm_err(LM_EFORMAT, "%s: model.unk_token \"%s\" is not in the vocabulary",
                          j->label, j->unk_token);
    }
    t->fuse_unk = j->fuse_unk;
    t->ignore_merges = j->ignore_merges;
    for (int b = 0; b < 256; b++) {
        char c[4];
        size_t n = utf8_encode(byte_to_cp[b], c);
        t->byte_id[b] = vocab_lookup(t, c, n);
        t->byte_fb_n[b] = 0;
        if (t->byte_id[b] >= 0 || !j->byte_fallback)
            continue;
        /* HF's byte fallback spells the missing character's UTF-8 bytes as
         * <0xHH> tokens, all or nothing. */
        int32_t fb[4];
        size_t k = 0;
        for (; k < n; k++) {
            char name[8];
            snprintf(name, sizeof(name), "<0x%02X>", (unsigned char)c[k]);
            fb[k] = vocab_lookup(t, name, strlen(name));
            if (fb[k] < 0)
                break;
        }
        if (k == n) {
            for (k = 0; k < n; k++)
                t->byte_fb[b][k] = fb[k];
            t->byte_fb_n[b] = (uint8_t)n;
        }
    }
    return 0;
}

static int build_steps(struct tok *t)
{
    const struct tok_json *j = t->json;
    t->norms = j->norms;
    t->n_norms = j->n_norms;
    size_t byte_level_at = j->n_pretoks;
    for (size_t i = 0; i < j->n_pretoks; i++)
        if (j->pretoks[i].kind == TOK_JSON_PRETOK_BYTE_LEVEL)
            byte_level_at = i;
    if (byte_level_at == j->n_pretoks)
        return lm_err(LM_EUNSUPPORTED, "%s: the pre_tokenizer has no ByteLevel step; only "
                      "byte-level BPE is supported", j->label);
    if (byte_level_at + 1 != j->n_pretoks)
        return lm_err(LM_EUNSUPPORTED, "%s: pre_tokenizer steps after ByteLevel are not "
                      "supported", j->label);
    t->steps = lm_calloc(j->n_pretoks, sizeof(*t->steps));
    if (!t->steps)
        return LM_ENOMEM;
    for (size_t i = 0; i < j->n_pretoks; i++) {
        const struct tok_json_pretok *p = &j->pretoks[i];
        struct pretok_step *st = &t->steps[t->n_steps++];
        st->kind = p->kind;
        st->behavior = p->behavior;
        st->invert = p->invert;
        st->add_prefix_space = p->add_prefix_space;
        if (p->kind == TOK_JSON_PRETOK_SPLIT)
            st->re = regex_compile(j->label, p->pattern, p->pattern_is_regex);
        else if (p->use_regex)
            st->re = regex_compile(j->label, gpt2_pattern, true);
        else
            continue;
        if (!st->re)
            return LM_EFORMAT;
    }
    return 0;
}

static int build_added(struct tok *t)
{
    const struct tok_json *j = t->json;
    t->added_raw.pats = lm_calloc(j->n_added, sizeof(struct added_pat));
    t->added_norm.pats = lm_calloc(j->n_added, sizeof(struct added_pat));
    t->norm_texts = lm_calloc(j->n_added, sizeof(char *));
    if (!t->added_raw.pats || !t->added_norm.pats || !t->norm_texts)
        return LM_ENOMEM;
    for (size_t i = 0; i < j->n_added; i++) {
        const struct tok_json_added *a = &j->added[i];
        struct added_pat p = {
            .s = a->content, .len = a->len, .id = t->added_ids[i],
            .flags = (uint8_t)((a->special ? ADDED_SPECIAL : 0) |
                               (a->single_word ? ADDED_SINGLE_WORD : 0) |
                               (a->lstrip ? ADDED_LSTRIP : 0) | (a->rstrip ? ADDED_RSTRIP : 0)),
        };
        if (!a->normalized) {
            t->added_raw.pats[t->added_raw.n++] = p;
            continue;
        }
        /* Matched against normalized text, so looked for in normalized form. */
        char *norm;
        size_t norm_len;
        int rc = normalize(t, a->content, a->len, &norm, &norm_len);
        if (rc)
            return lm_err_context(rc, "%s: added_tokens[%zu]", j->label, i);
        if (norm) {
            t->norm_texts[t->n_norm_texts++] = norm;
            if (norm_len == 0)
                continue;
            p.s = norm;
            p.len = (uint32_t)norm_len;
        }
        t->added_norm.pats[t->added_norm.n++] = p;
    }
    added_set_index(&t->added_raw);
    added_set_index(&t->added_norm);
    return 0;
}

static struct tok *tok_from_json(struct tok_json *j)
{
    if (!j)
        return NULL;
    pthread_once(&byte_map_once, byte_map_init);
    struct tok *t = lm_calloc(1, sizeof(*t));
    if (!t) {
        tok_json_free(j);
        return NULL;
    }
    t->json = j;
    t->bos_id = -1;
    t->added_ids = lm_calloc(j->n_added, sizeof(*t->added_ids));
    int rc = t->added_ids ? build_ids(t) : LM_ENOMEM;
    if (!rc)
        rc = build_merges(t);
    if (!rc)
        rc = build_bytes(t);
    if (!rc)
        rc = build_steps(t);
    if (!rc)
        rc = build_added(t);
    if (rc) {
        tok_free(t);
        return NULL;
    }
    if (j->bos_token)
        t->bos_id = str_lookup(t, j->bos_token, strlen(j->bos_token));
    return t;
}

struct tok *tok_load_buffer(const char *json, size_t len, const char *label)
{
    return tok_from_json(tok_json_parse(json, len, label));
}

struct tok *tok_load(const char *path)
{
    if (lm_is_dir(path)) {
        char *file = lm_path_join(path, "tokenizer.json");
        if (!file)
            return NULL;
        struct tok *t = NULL;
        if (!lm_is_file(file))
            lm_err(LM_EIO, "%s: no tokenizer.json in this directory", path);
        else
            t = tok_from_json(tok_json_load(file));
        free(file);
        return t;
    }
    return tok_from_json(tok_json_load(path));
}

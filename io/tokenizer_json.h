/* tokenizer.json (Hugging Face tokenizers) as plain C structs.
 *
 * Only the parts that decide token ids are kept: the BPE model (vocab,
 * merges, unk/byte-fallback/ignore-merges options), added_tokens, the
 * normalizer, the pre-tokenizer, the decoder kind and the token that the
 * post-processor puts before a single sequence (Llama-3's BOS).
 *
 * Shapes accepted (those of Qwen2, Qwen2.5, Qwen3, Llama-3 and the
 * DeepSeek-R1-Distill models, plus GPT-2-style files):
 *   model          BPE; "type" may be absent when vocab and merges are there.
 *                  merges as ["a b", ...] or as [["a", "b"], ...] (one form
 *                  per file); "#version" lines of the string form are skipped.
 *                  dropout must be null, continuing_subword_prefix and
 *                  end_of_word_suffix null or "".
 *   normalizer     null, NFC, NFD, NFKC, NFKD, or a Sequence of those.
 *   pre_tokenizer  null, Split (Regex or String pattern, any behavior,
 *                  invert), ByteLevel, or a Sequence of those (nested
 *                  Sequences are flattened).
 *   decoder        null, ByteLevel, or a Sequence holding only ByteLevel.
 *   post_processor anything; a TemplateProcessing (alone or in a Sequence)
 *                  whose "single" template starts with a SpecialToken names
 *                  the BOS token.
 * Any other normalizer, pre-tokenizer, decoder or model kind is an
 * LM_EUNSUPPORTED error naming it ("...: pre_tokenizer type 'Metaspace' is
 * not supported"). Wrong JSON types, missing keys, invalid UTF-8 and ids
 * outside [0, 2^31) are LM_EFORMAT errors naming the key.
 *
 * model.vocab and model.merges (hundreds of thousands of strings) are read
 * by a small streaming scanner straight into the struct's storage; the
 * other, small members go through cJSON.
 *
 * Limitation: U+0000 cannot be part of a string: vocab and merges reject
 * it, cJSON ends the other strings there (byte-level vocabularies never
 * hold it: byte 0 is 'Ā'). */
#ifndef MS_IO_TOKENIZER_JSON_H
#define MS_IO_TOKENIZER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tok_json_norm {
    TOK_JSON_NORM_NFC,
    TOK_JSON_NORM_NFD,
    TOK_JSON_NORM_NFKC,
    TOK_JSON_NORM_NFKD,
};

enum tok_json_split_behavior {
    TOK_JSON_SPLIT_REMOVED,
    TOK_JSON_SPLIT_ISOLATED,
    TOK_JSON_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_JSON_SPLIT_MERGED_WITH_NEXT,
    TOK_JSON_SPLIT_CONTIGUOUS,
};

enum tok_json_pretok_kind {
    TOK_JSON_PRETOK_SPLIT,
    TOK_JSON_PRETOK_BYTE_LEVEL,
};

/* One step of the pre-tokenizer, in order. */
struct tok_json_pretok {
    enum tok_json_pretok_kind kind;
    /* TOK_JSON_PRETOK_SPLIT */
    const char *pattern;            /* regex source, or the literal string */
    bool        pattern_is_regex;
    enum tok_json_split_behavior behavior;
    bool        invert;
    /* TOK_JSON_PRETOK_BYTE_LEVEL */
    bool        add_prefix_space;
    bool        use_regex;          /* also split with the GPT-2 pattern */
};

struct tok_json_vocab {
    const char *token;              /* UTF-8, NUL-terminated */
    uint32_t    len;
    int32_t     id;
};

struct tok_json_merge {
    const char *left, *right;       /* NUL-terminated */
    uint32_t    left_len, right_len;
};

struct tok_json_added {
    const char *content;            /* UTF-8, NUL-terminated, never empty */
    uint32_t    len;
    int32_t     id;                 /* as written; Hugging Face numbers them itself */
    bool        special;
    bool        single_word;
    bool        lstrip;
    bool        rstrip;
    bool        normalized;
};

/* Everything read from one file. Strings live in the struct's own storage
 * and stay valid until tok_json_free. */
struct tok_json {
    const char *label;              /* the path, for messages */

    struct tok_json_vocab *vocab;   /* model.vocab, in file order */
    size_t                 n_vocab;
    struct tok_json_merge *merges;  /* model.merges, rank = index */
    size_t                 n_merges;
    const char            *unk_token;     /* NULL when none */
    bool                   byte_fallback;
    bool                   fuse_unk;
    bool                   ignore_merges;

    struct tok_json_added *added;   /* added_tokens, in file order */
    size_t                 n_added;

    enum tok_json_norm    *norms;   /* applied in order; none when 0 */
    size_t                 n_norms;
    struct tok_json_pretok *pretoks; /* applied in order; none when 0 */
    size_t                 n_pretoks;

    bool                   decoder_byte_level; /* false: no decoder given */
    const char            *bos_token;  /* from the post-processor; NULL if none */

    struct tok_json_arena *arena;   /* private */
};

/* Reads and validates `path` (a tokenizer.json file). NULL with an error. */
struct tok_json *tok_json_load(const char *path);

/* The same for a buffer holding the file's bytes; `label` names it in
 * messages. */
struct tok_json *tok_json_parse(const char *buf, size_t len, const char *label);

/* Accepts NULL. */
void tok_json_free(struct tok_json *j);

const char *tok_json_norm_name(enum tok_json_norm n);

#endif

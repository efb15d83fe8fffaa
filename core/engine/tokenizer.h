/* Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json, giving
 * the same token ids as Hugging Face tokenizers (checked id for id against
 * it on Qwen's tokenizer by tests/test_tokenizer_hf.sh).
 *
 * Encoding, in Hugging Face's order:
 *   1. added tokens with normalized=false are matched on the raw text,
 *      leftmost-longest, honouring single_word, lstrip and rstrip;
 *   2. the normalizer (NFC/NFD/NFKC/NFKD through utf8proc) runs on each piece
 *      between them, and added tokens with normalized=true are matched on the
 *      normalized pieces;
 *   3. the pre-tokenizer splits what is left: Split with the file's regex,
 *      compiled by PCRE2 with UTF and UCP (JIT when available), `\s` taken
 *      as Unicode White_Space the way Oniguruma (HF's regex engine) reads it;
 *      then ByteLevel (prefix space, GPT-2 regex when use_regex);
 *   4. each piece is mapped byte by byte onto the GPT-2 byte alphabet and
 *      merged by BPE rank (lowest rank first, leftmost first), or emitted
 *      whole when ignore_merges is set and the piece is in the vocabulary.
 *
 * Special tokens (added tokens with special=true) are matched only when the
 * caller allows it; otherwise their text is tokenized like any other text,
 * which is Hugging Face's `encode_special_tokens` (split_special_tokens)
 * mode. Non-special added tokens (Qwen's <think>, <tool_call>) are always
 * matched, as in Hugging Face.
 *
 * Added tokens get the ids Hugging Face gives them, which ignores their
 * "id" field: a token whose text is in the vocabulary takes that token's
 * id, the others are numbered in file order from the vocabulary size. Real
 * files write exactly these ids.
 *
 * Input bytes that are not valid UTF-8 (which Hugging Face cannot take) are
 * kept as pieces of their own that skip normalization and pre-tokenization,
 * so decode(encode(x)) == x for any byte string x.
 *
 * A struct tok is read-only once loaded: any number of threads may encode
 * and decode with it at the same time. */
#ifndef MS_CORE_ENGINE_TOKENIZER_H
#define MS_CORE_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tok;

/* Loads `path`: a tokenizer.json file, or a model directory holding one.
 * NULL with an error (LM_EIO, LM_EFORMAT, LM_EUNSUPPORTED) naming the file
 * and what is wrong with it. Free with tok_free. */
struct tok *tok_load(const char *path);

/* The same from the bytes of a tokenizer.json held in memory; `label` names
 * it in messages. */
struct tok *tok_load_buffer(const char *json, size_t len, const char *label);

/* Accepts NULL. */
void tok_free(struct tok *t);

/* A growable list of token ids. Zero-initialise it, let tok_encode (or
 * tok_ids_push) append to it, release it with tok_ids_free. */
struct tok_ids {
    int32_t *data;
    size_t   n;
    size_t   cap;
};

int tok_ids_push(struct tok_ids *v, int32_t id);
void tok_ids_free(struct tok_ids *v);

/* Tokenizes `len` bytes of `text` and appends the ids to `out`. Special
 * tokens are recognised in the text only when `allow_special` is true (see
 * above). No BOS/EOS or template is added: callers that want the
 * post-processor's BOS prepend tok_bos_id() themselves. 0 or a negative
 * LM_E* code (out of memory; a regex engine failure), in which case `out`
 * is left as it was. */
int tok_encode(const struct tok *t, const char *text, size_t len, bool allow_special,
               struct tok_ids *out);

/* Turns ids back into bytes: byte-level tokens through the inverse GPT-2
 * map, added tokens as their text. The result is exactly the bytes that
 * were encoded (it may end inside a UTF-8 character when the ids stop
 * there). `skip_special` leaves special tokens out. *out is NUL-terminated
 * (not counted in *out_len) and freed by the caller. An id that names no
 * token is an LM_EINVAL error. */
int tok_decode(const struct tok *t, const int32_t *ids, size_t n_ids, bool skip_special,
               char **out, size_t *out_len);

/* One past the largest id of any token (vocab or added). Ids below it may
 * still be unused. */
size_t tok_n_vocab(const struct tok *t);

/* The token's text as written in the file (byte-level form for vocabulary
 * tokens, e.g. "Ġthe"), or NULL when no token has this id. */
const char *tok_id_to_token(const struct tok *t, int32_t id);

/* The id of the token whose text is `token` (added tokens first), or -1. */
int32_t tok_token_to_id(const struct tok *t, const char *token);

/* True for added tokens marked special. */
bool tok_is_special(const struct tok *t, int32_t id);

/* The token the file's post-processor puts before a single sequence (Llama-3's
 * <|begin_of_text|>), or -1 when it adds none (Qwen). */
int32_t tok_bos_id(const struct tok *t);

/* ===== Streaming decode =====
 *
 * For printing tokens as they are generated: each call returns the text
 * that became complete with this token. Bytes of a UTF-8 character split
 * across tokens are held back until the character is whole; bytes that can
 * never form a valid character become U+FFFD (as Hugging Face's decode does
 * with from_utf8_lossy), so the output is always valid UTF-8. */
struct tok_stream;

struct tok_stream *tok_stream_new(const struct tok *t, bool skip_special);
void tok_stream_free(struct tok_stream *s);

/* Feeds one id. *text (not NUL-terminated) and *len receive the newly
 * completed text, possibly empty; it stays valid until the next call on
 * this stream. LM_EINVAL for an unknown id (the stream is unchanged). */
int tok_stream_push(struct tok_stream *s, int32_t id, const char **text, size_t *len);

/* Ends the stream: whatever is held back comes out as U+FFFD. The stream
 * can then be reused from a clean state. */
int tok_stream_flush(struct tok_stream *s, const char **text, size_t *len);

#endif

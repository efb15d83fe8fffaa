/* tokenizer_config.json: the chat template and the special-token strings a
 * Hugging Face tokenizer directory declares beside tokenizer.json.
 *
 * Contract: tokenizer_config_load() and tokenizer_config_parse() return 0 or
 * a negative LM_E* code (LM_EIO: the file exists but cannot be read;
 * LM_EFORMAT: not a JSON object, or a key read here holds the wrong type or
 * invalid UTF-8; LM_ENOMEM), with a message naming the file and the key in
 * lm_last_error(). A missing file is not an error: load gives 0 with
 * `present` false and every field NULL. Keys not listed below are ignored
 * whatever they hold; a key that is absent or null leaves its field NULL.
 * On error the struct is left empty (add_*_token -1); tokenizer_config_deinit()
 * is safe on it either way. */
#ifndef MS_IO_TOKENIZER_CONFIG_H
#define MS_IO_TOKENIZER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct tokenizer_config {
    char *path;          /* the file it came from */
    bool  present;       /* false: load found no file (every field below NULL) */
    /* "chat_template": a string, or a list of named templates
     * [{"name": ..., "template": ...}, ...], of which the first entry's
     * template is taken. "" stays "" (a template without text). */
    char *chat_template;
    /* "bos_token" / "eos_token": a string, or an AddedToken object
     * ({"__type": "AddedToken", "content": ..., ...}) whose "content" is
     * taken. */
    char *bos_token;
    char *eos_token;
    /* "pad_token" / "unk_token": the same forms; any other value (an id,
     * a list) is ignored, not an error. */
    char *pad_token;
    char *unk_token;
    /* "add_bos_token" / "add_eos_token": 1 or 0 when the key holds a
     * boolean, else -1 (absent, null or another type: ignored). */
    int   add_bos_token;
    int   add_eos_token;
};

/* Reads `path`; a missing file gives 0 with `present` false. Files over
 * 64 MiB are refused (LM_EIO). */
int tokenizer_config_load(const char *path, struct tokenizer_config *out);
/* The same from `len` bytes of text in memory (need not be NUL-terminated);
 * `path` names it in messages. Sets `present`. */
int tokenizer_config_parse(const char *text, size_t len, const char *path,
                           struct tokenizer_config *out);
void tokenizer_config_deinit(struct tokenizer_config *c);

#endif

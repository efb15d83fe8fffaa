/* Chat formats and their detection (see chat.h). tokenizer_config.json is
 * read by io/tokenizer_config.h; this file only looks at the template text. */
#include "chat.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "hf_config.h"
#include "lm_error.h"
#include "strbuf.h"
#include "tokenizer_config.h"

#define CHAT_JINJA_MAX_BYTES (64u << 20)
#define CHAT_R1_BOS "<｜begin▁of▁sentence｜>"
#define CHAT_LLAMA3_BOS "<|begin_of_text|>"

const char *chat_format_name(enum chat_format f)
{
    switch (f) {
    case CHAT_FORMAT_CHATML:      return "chatml";
    case CHAT_FORMAT_DEEPSEEK_R1: return "deepseek-r1";
    case CHAT_FORMAT_LLAMA3:      return "llama3";
    default:                      return "none";
    }
}

int chat_format_parse(const char *name, enum chat_format *out, bool *is_auto)
{
    static const enum chat_format all[] = {
        CHAT_FORMAT_NONE, CHAT_FORMAT_CHATML, CHAT_FORMAT_DEEPSEEK_R1, CHAT_FORMAT_LLAMA3,
    };
    *is_auto = false;
    *out = CHAT_FORMAT_NONE;
    if (strcmp(name, "auto") == 0) {
        *is_auto = true;
        return 0;
    }
    for (size_t i = 0; i < LM_ARRAY_SIZE(all); i++)
        if (strcmp(name, chat_format_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return lm_err(LM_EINVAL, "unknown chat format '%s' (auto, none, chatml, deepseek-r1, llama3)", name);
}

/* ===== Reading the template ===== */

/* Jinja string-literal escapes: \\ \n \t \' \" (others kept as written). */
static char *jinja_unescape(const char *s, size_t n)
{
    struct lm_strbuf b = { 0 };
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char c = s[++i];
            switch (c) {
            case 'n': lm_strbuf_puts(&b, "\n"); break;
            case 't': lm_strbuf_puts(&b, "\t"); break;
            case '\\': case '\'': case '"': lm_strbuf_putn(&b, &c, 1); break;
            default: lm_strbuf_putn(&b, s + i - 1, 2); break;
            }
        } else {
            lm_strbuf_putn(&b, s + i, 1);
        }
    }
    return lm_strbuf_finish(&b);
}

/* The default system prompt of a ChatML template: text between
 * "<|im_start|>system\n" and "<|im_end|>" inside one string literal (no
 * quote in between, which would mean a message is spliced in). */
static int chatml_default_system(const char *tmpl, char **out)
{
    static const char *const heads[] = { "<|im_start|>system\\n", "<|im_start|>system\n" };
    *out = NULL;
    for (size_t h = 0; h < LM_ARRAY_SIZE(heads); h++) {
        size_t hl = strlen(heads[h]);
        for (const char *p = strstr(tmpl, heads[h]); p; p = strstr(p + 1, heads[h])) {
            const char *body = p + hl;
            const char *stop = strstr(body, "<|im_end|>");
            if (!stop)
                break;
            if (memchr(body, '\'', (size_t)(stop - body)) || memchr(body, '"', (size_t)(stop - body)) ||
                stop == body)
                continue;
            if (!(*out = jinja_unescape(body, (size_t)(stop - body))))
                return LM_ENOMEM;
            return 0;
        }
    }
    return 0;
}

int chat_detect_template(const char *tmpl, const char *source, struct chat_detected *out)
{
    static const struct {
        const char *marker;
        enum chat_format format;
    } markers[] = {
        { "<｜Assistant｜>", CHAT_FORMAT_DEEPSEEK_R1 },
        { "<｜User｜>", CHAT_FORMAT_DEEPSEEK_R1 },
        { "<|start_header_id|>", CHAT_FORMAT_LLAMA3 },
        { "<|im_start|>", CHAT_FORMAT_CHATML },
    };
    memset(out, 0, sizeof(*out));
    out->has_template = true;
    for (size_t i = 0; i < LM_ARRAY_SIZE(markers); i++) {
        if (!strstr(tmpl, markers[i].marker))
            continue;
        out->format = markers[i].format;
        if (out->format == CHAT_FORMAT_CHATML && chatml_default_system(tmpl, &out->default_system) < 0)
            return LM_ENOMEM;
        snprintf(out->reason, sizeof out->reason, "%s: chat template contains '%s'%s%s%s", source,
                 markers[i].marker, out->format != CHAT_FORMAT_CHATML ? "" :
                 out->default_system ? "; default system prompt \"" : "; no default system prompt",
                 out->default_system ? out->default_system : "", out->default_system ? "\"" : "");
        return 0;
    }
    out->format = CHAT_FORMAT_NONE;
    snprintf(out->reason, sizeof out->reason, "%s: chat template has none of the known markers", source);
    return 0;
}

int chat_detect_dir(const char *dir, struct chat_detected *out)
{
    memset(out, 0, sizeof(*out));
    char *cfg = lm_path_join(dir, "tokenizer_config.json");
    char *jinja = lm_path_join(dir, "chat_template.jinja");
    char *tmpl = NULL;
    const char *source = NULL;
    struct tokenizer_config tc;
    int rc = 0;
    if (!cfg || !jinja) {
        rc = LM_ENOMEM;
        goto done;
    }
    if ((rc = tokenizer_config_load(cfg, &tc)) < 0)
        goto done;
    if (tc.chat_template) {
        tmpl = tc.chat_template; /* taken over */
        tc.chat_template = NULL;
        source = cfg;
    }
    tokenizer_config_deinit(&tc);
    if (!tmpl && lm_is_file(jinja)) {
        size_t len;
        if (!(tmpl = lm_read_file(jinja, CHAT_JINJA_MAX_BYTES, &len))) {
            rc = LM_EIO;
            goto done;
        }
        source = jinja;
    }
    if (tmpl) {
        rc = chat_detect_template(tmpl, source, out);
    } else {
        out->format = CHAT_FORMAT_NONE;
        snprintf(out->reason, sizeof out->reason, "%s: no chat template (tokenizer_config.json "
                 "\"chat_template\" or chat_template.jinja)", dir);
    }
done:
    free(tmpl);
    free(cfg);
    free(jinja);
    return rc;
}

void chat_detected_deinit(struct chat_detected *d)
{
    if (!d)
        return;
    free(d->default_system);
    memset(d, 0, sizeof(*d));
}

const char *chat_default_system(enum chat_format f, const struct chat_detected *detected)
{
    if (f != CHAT_FORMAT_CHATML)
        return NULL;
    if (detected && detected->has_template && detected->format == CHAT_FORMAT_CHATML)
        return detected->default_system;
    return CHAT_QWEN25_DEFAULT_SYSTEM;
}

/* ===== Formatting ===== */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* s trimmed of ASCII white space at both ends (what Jinja's trim removes
 * for these texts). */
static void sb_add_trimmed(struct lm_strbuf *b, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_space(s[n - 1]))
        n--;
    lm_strbuf_putn(b, s, n);
}

char *chat_format_prompt(enum chat_format f, const char *system, const char *user, const char *bos)
{
    struct lm_strbuf b = { 0 };
    switch (f) {
    case CHAT_FORMAT_CHATML:
        if (system) {
            lm_strbuf_puts(&b, "<|im_start|>system\n");
            lm_strbuf_puts(&b, system);
            lm_strbuf_puts(&b, "<|im_end|>\n");
        }
        lm_strbuf_puts(&b, "<|im_start|>user\n");
        lm_strbuf_puts(&b, user);
        lm_strbuf_puts(&b, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case CHAT_FORMAT_DEEPSEEK_R1:
        lm_strbuf_puts(&b, bos ? bos : CHAT_R1_BOS);
        if (system)
            lm_strbuf_puts(&b, system);
        lm_strbuf_puts(&b, "<｜User｜>");
        lm_strbuf_puts(&b, user);
        lm_strbuf_puts(&b, "<｜Assistant｜><think>\n");
        break;
    case CHAT_FORMAT_LLAMA3:
        lm_strbuf_puts(&b, bos ? bos : CHAT_LLAMA3_BOS);
        if (system) {
            lm_strbuf_puts(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
            sb_add_trimmed(&b, system);
            lm_strbuf_puts(&b, "<|eot_id|>");
        }
        lm_strbuf_puts(&b, "<|start_header_id|>user<|end_header_id|>\n\n");
        sb_add_trimmed(&b, user);
        lm_strbuf_puts(&b, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    default:
        lm_strbuf_puts(&b, user);
        break;
    }
    return lm_strbuf_finish(&b);
}

/* The BOS text to write for a format: the tokenizer's BOS token, else the
 * format's standard token when the vocabulary has it, else "". */
static const char *bos_text(const struct tok *t, enum chat_format f)
{
    int32_t id = tok_bos_id(t);
    const char *s = id >= 0 ? tok_id_to_token(t, id) : NULL;
    if (s)
        return s;
    const char *std = f == CHAT_FORMAT_LLAMA3 ? CHAT_LLAMA3_BOS : CHAT_R1_BOS;
    return tok_token_to_id(t, std) >= 0 ? std : "";
}

int chat_encode(const struct tok *t, enum chat_format f, const char *system, const char *user,
                struct tok_ids *out)
{
    const char *bos = f == CHAT_FORMAT_DEEPSEEK_R1 || f == CHAT_FORMAT_LLAMA3 ? bos_text(t, f) : NULL;
    char *text = chat_format_prompt(f, f == CHAT_FORMAT_NONE ? NULL : system, user, bos);
    if (!text)
        return LM_ENOMEM;
    int rc = 0;
    if (f == CHAT_FORMAT_NONE && tok_bos_id(t) >= 0)
        rc = tok_ids_push(out, tok_bos_id(t));
    if (rc == 0)
        rc = tok_encode(t, text, strlen(text), f != CHAT_FORMAT_NONE, out);
    free(text);
    return rc;
}

static int push_unique(struct tok_ids *ids, int32_t id)
{
    if (id < 0)
        return 0;
    for (size_t i = 0; i < ids->n; i++)
        if (ids->data[i] == id)
            return 0;
    return tok_ids_push(ids, id);
}

int chat_stop_ids(const struct tok *t, enum chat_format f, const struct hf_config *cfg,
                  struct tok_ids *ids)
{
    int rc;
    if ((rc = push_unique(ids, tok_token_to_id(t, "<|im_end|>"))) < 0 ||
        (rc = push_unique(ids, tok_token_to_id(t, "<|endoftext|>"))) < 0)
        return rc;
    if (f == CHAT_FORMAT_LLAMA3 && (rc = push_unique(ids, tok_token_to_id(t, "<|eot_id|>"))) < 0)
        return rc;
    if (f == CHAT_FORMAT_DEEPSEEK_R1 &&
        (rc = push_unique(ids, tok_token_to_id(t, "<｜end▁of▁sentence｜>"))) < 0)
        return rc;
    for (int i = 0; cfg && i < cfg->n_eos_token_ids; i++)
        if ((rc = push_unique(ids, (int32_t)cfg->eos_token_ids[i])) < 0)
            return rc;
    return 0;
}

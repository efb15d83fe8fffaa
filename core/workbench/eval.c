/* Benchmark evaluation: answer extraction, scoring, the JSONL reader and the
 * multi-threaded run over a benchmark. See eval.h for the rules. */
#include "eval.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "generate.h"
#include "lm_error.h"

/* ===== Answer extraction ===== */

static bool is_word_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* The content [*b, *e) of the last well-formed \boxed{...} in s[0..len). */
static bool find_last_boxed(const char *s, size_t len, size_t *b, size_t *e)
{
    static const char key[] = "\\boxed";
    const size_t klen = sizeof(key) - 1;
    bool found = false;
    for (size_t i = 0; i + klen <= len; i++) {
        if (memcmp(s + i, key, klen) != 0)
            continue;
        size_t j = i + klen;
        while (j < len && s[j] == ' ')
            j++;
        if (j >= len || s[j] != '{')
            continue;
        size_t depth = 0, k = j;
        for (; k < len; k++) {
            if (s[k] == '{') {
                depth++;
            } else if (s[k] == '}') {
                if (--depth == 0)
                    break;
            }
        }
        if (k >= len)
            continue; /* unbalanced: not an answer */
        *b = j + 1;
        *e = k;
        found = true;
        i = k; /* boxes nested inside this one are part of its content */
    }
    return found;
}

/* What follows the last "The answer is" / "the answer is" in s[0..len), up
 * to the end of the line or a sentence-ending period. */
static bool find_last_answer_is(const char *s, size_t len, size_t *b, size_t *e)
{
    static const char key[] = "he answer is";
    const size_t klen = sizeof(key) - 1;
    bool found = false;
    for (size_t i = 1; i + klen <= len; i++) {
        if ((s[i - 1] != 'T' && s[i - 1] != 't') || memcmp(s + i, key, klen) != 0)
            continue;
        if (i >= 2 && is_word_char(s[i - 2]))
            continue;
        size_t j = i + klen;
        while (j < len && (s[j] == ' ' || s[j] == ':' || s[j] == '\t'))
            j++;
        size_t k = j;
        while (k < len && s[k] != '\n' && s[k] != '\r') {
            if (s[k] == '.' && (k + 1 == len || isspace((unsigned char)s[k + 1])))
                break;
            k++;
        }
        if (k > j) {
            *b = j;
            *e = k;
            found = true;
        }
        i = k > i ? k - 1 : i;
    }
    return found;
}

static bool find_answer(const char *s, size_t len, size_t *b, size_t *e)
{
    return find_last_boxed(s, len, b, e) || find_last_answer_is(s, len, b, e);
}

/* The last occurrence of `needle` in s[0..len), or NULL. */
static const char *find_last(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = len >= n ? len - n + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, n) == 0)
            return s + i;
    return NULL;
}

char *eval_extract_answer(const char *text, size_t len, bool *oom)
{
    if (oom)
        *oom = false;
    size_t b = 0, e = 0;
    bool found = false;
    const char *think_end = find_last(text, len, "</think>");
    if (think_end) {
        size_t off = (size_t)(think_end - text) + strlen("</think>");
        found = find_answer(text + off, len - off, &b, &e);
        b += off;
        e += off;
    }
    if (!found)
        found = find_answer(text, len, &b, &e);
    if (!found)
        return NULL;
    /* Trim spaces and math-mode dollars. */
    while (b < e && (isspace((unsigned char)text[b]) || text[b] == '$'))
        b++;
    while (e > b && (isspace((unsigned char)text[e - 1]) || text[e - 1] == '$'))
        e--;
    if (e == b)
        return NULL;
    char *out = lm_strndup(text + b, e - b);
    if (!out && oom)
        *oom = true;
    return out;
}

/* ===== Numbers ===== */

/* Reads a plain number at s[*pos..end): sign, digits with optional comma
 * groups of three, optional decimal part. */
static bool parse_plain(const char *s, size_t *pos, size_t end, double *out, bool *is_int)
{
    char buf[128];
    size_t n = 0, i = *pos;
    if (i < end && (s[i] == '-' || s[i] == '+'))
        buf[n++] = s[i++];
    size_t digits = 0, group = 0;
    bool commas = false;
    for (; i < end; i++) {
        if (isdigit((unsigned char)s[i])) {
            if (n + 2 >= sizeof(buf))
                return false;
            buf[n++] = s[i];
            digits++;
            group++;
        } else if (s[i] == ',' && digits > 0 && i + 1 < end && isdigit((unsigned char)s[i + 1])) {
            if ((commas && group != 3) || (!commas && group > 3))
                return false;
            commas = true;
            group = 0;
        } else {
            break;
        }
    }
    if (commas && group != 3)
        return false;
    bool integer = true;
    if (i < end && s[i] == '.' && i + 1 < end && isdigit((unsigned char)s[i + 1])) {
        integer = false;
        buf[n++] = s[i++];
        for (; i < end && isdigit((unsigned char)s[i]); i++) {
            if (n + 2 >= sizeof(buf))
                return false;
            buf[n++] = s[i];
            digits++;
        }
    }
    if (digits == 0)
        return false;
    buf[n] = '\0';
    char *stop;
    *out = strtod(buf, &stop);
    if (*stop != '\0' || !isfinite(*out))
        return false;
    *is_int = integer;
    *pos = i;
    return true;
}

/* \frac{a}{b}, \dfrac{a}{b}, \tfrac{a}{b} at s[*pos..end). */
static bool parse_latex_frac(const char *s, size_t *pos, size_t end, double *out)
{
    static const char *const names[] = { "\\frac", "\\dfrac", "\\tfrac" };
    size_t i = *pos;
    bool neg = false;
    if (i < end && s[i] == '-') {
        neg = true;
        i++;
    }
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        size_t nl = strlen(names[k]);
        if (end - i < nl || memcmp(s + i, names[k], nl) != 0)
            continue;
        size_t j = i + nl;
        double v[2];
        for (int part = 0; part < 2; part++) {
            bool is_int;
            if (j >= end || s[j] != '{')
                return false;
            j++;
            if (!parse_plain(s, &j, end, &v[part], &is_int))
                return false;
            if (j >= end || s[j] != '}')
                return false;
            j++;
        }
        if (v[1] == 0.0)
            return false;
        *out = (neg ? -v[0] : v[0]) / v[1];
        *pos = j;
        return true;
    }
    return false;
}

bool eval_parse_number(const char *s, double *out, bool *is_integer)
{
    size_t b = 0, e = strlen(s);
    while (b < e && (isspace((unsigned char)s[b]) || s[b] == '$'))
        b++;
    while (e > b && (isspace((unsigned char)s[e - 1]) || s[e - 1] == '$' || s[e - 1] == '.' ||
                     s[e - 1] == '%'))
        e--;
    if (b == e)
        return false;
    size_t i = b;
    double v;
    bool is_int;
    if (parse_latex_frac(s, &i, e, &v)) {
        if (i != e)
            return false;
        *out = v;
        *is_integer = false;
        return true;
    }
    if (!parse_plain(s, &i, e, &v, &is_int))
        return false;
    if (i < e && s[i] == '/') {
        double d;
        bool d_int;
        i++;
        if (!parse_plain(s, &i, e, &d, &d_int) || d == 0.0)
            return false;
        v /= d;
        is_int = false;
    }
    if (i != e)
        return false;
    *out = v;
    *is_integer = is_int;
    return true;
}

/* `s` without spaces, '$' and a trailing period, for text comparison. */
static char *normalize_text(const char *s)
{
    char *out = lm_malloc(strlen(s) + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (const char *p = s; *p; p++)
        if (!isspace((unsigned char)*p) && *p != '$')
            out[n++] = *p;
    while (n > 0 && out[n - 1] == '.')
        n--;
    out[n] = '\0';
    return out;
}

bool eval_answer_matches(const char *extracted, const char *reference)
{
    if (!extracted || !reference)
        return false;
    double a, b;
    bool a_int, b_int;
    if (eval_parse_number(extracted, &a, &a_int) && eval_parse_number(reference, &b, &b_int)) {
        if (a_int && b_int)
            return a == b;
        return fabs(a - b) <= 1e-6 * fmax(1.0, fabs(b));
    }
    char *x = normalize_text(extracted), *y = normalize_text(reference);
    bool same = x && y && *x && strcmp(x, y) == 0;
    free(x);
    free(y);
    return same;
}

/* ===== Reflection ===== */

static const struct {
    const char *text;
    bool whole_word;   /* must not run on into a longer word */
} reflective_phrases[] = {
    { "wait", true },
    { "re-examine", false },
    { "double-check", false },
    { "let me check", false },
    { "recap", true },
    { "let me just verify", false },
    { "let me just check", false },
};

size_t eval_count_reflective(const char *text, size_t len)
{
    size_t count = 0;
    const size_t n_phrases = sizeof(reflective_phrases) / sizeof(reflective_phrases[0]);
    for (size_t i = 0; i < len; i++) {
        if (i > 0 && is_word_char(text[i - 1]))
            continue;
        for (size_t k = 0; k < n_phrases; k++) {
            size_t pl = strlen(reflective_phrases[k].text);
            if (len - i < pl || strncasecmp(text + i, reflective_phrases[k].text, pl) != 0)
                continue;
            if (reflective_phrases[k].whole_word && i + pl < len && is_word_char(text[i + pl]))
                continue;
            count++;
            i += pl - 1;
            break;
        }
    }
    return count;
}

/* ===== Running ===== */

char *eval_apply_template(const char *tmpl, const char *question)
{
    static const char key[] = "{question}";
    const size_t klen = sizeof(key) - 1, qlen = strlen(question);
    size_t n = 0;
    for (const char *p = strstr(tmpl, key); p; p = strstr(p + klen, key))
        n++;
    size_t tlen = strlen(tmpl);
    if (n > 0 && qlen > ((size_t)-1 - tlen - 1) / n) {
        lm_err(LM_ENOMEM, "prompt template too long");
        return NULL;
    }
    char *out = lm_malloc(tlen + n * qlen + 1);
    if (!out)
        return NULL;
    char *w = out;
    const char *r = tmpl;
    for (const char *p = strstr(r, key); p; p = strstr(r, key)) {
        memcpy(w, r, (size_t)(p - r));
        w += p - r;
        memcpy(w, question, qlen);
        w += qlen;
        r = p + klen;
    }
    strcpy(w, r);
    return out;
}

void eval_results_deinit(struct eval_result *results, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(results[i].response);
        free(results[i].extracted);
        memset(&results[i], 0, sizeof(results[i]));
    }
}

/* What the worker threads share. */
struct eval_shared {
    struct model *const *models;
    const struct tok *tok;
    const struct eval_bench *bench;
    size_t n_items;
    const struct eval_params *params;
    lm_progress_fn progress;
    void *ud;
    struct eval_result *results;

    pthread_mutex_t lock;
    size_t next;         /* next problem to hand out */
    size_t n_done;
    int rc;              /* first error */
    char message[512];   /* its message (errors are per thread) */
    atomic_bool stop;
};

/* The text of one response as it streams. */
struct eval_text {
    char *data;
    size_t len, cap;
    bool oom;
    struct eval_shared *shared;
};

/* Calls the progress callback (the caller holds the lock); false stops the
 * run. */
static bool report_progress(struct eval_shared *sh)
{
    if (!sh->progress || sh->progress((double)sh->n_done / (double)sh->n_items, "eval", sh->ud))
        return true;
    atomic_store(&sh->stop, true);
    if (!sh->rc) {
        sh->rc = LM_ECANCELED;
        snprintf(sh->message, sizeof(sh->message), "interrupted");
    }
    return false;
}

static bool text_append(struct eval_text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *d = lm_realloc_array(t->data, cap, 1);
        if (!d) {
            t->oom = true;
            return false;
        }
        t->data = d;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
    return true;
}

static bool on_gen_event(const struct gen_event *ev, void *ud)
{
    struct eval_text *t = ud;
    if ((ev->kind == GEN_EVENT_TOKEN || ev->kind == GEN_EVENT_FLUSH) && ev->len > 0 &&
        !text_append(t, ev->text, ev->len))
        return false;
    /* Let a long answer be interrupted: ask the callback now and then. */
    if (ev->kind == GEN_EVENT_TOKEN && ev->index % 64 == 63) {
        struct eval_shared *sh = t->shared;
        pthread_mutex_lock(&sh->lock);
        report_progress(sh);
        pthread_mutex_unlock(&sh->lock);
    }
    return !atomic_load(&t->shared->stop);
}

/* Runs problem i on model m. 0 with *res filled in (done stays false when
 * the run was stopped meanwhile), or an error. */
static int eval_one(struct eval_shared *sh, struct model *m, size_t i, struct eval_result *res)
{
    const struct eval_params *p = sh->params;
    const struct eval_item *item = &sh->bench->items[i];
    char *user = p->prompt_template ? eval_apply_template(p->prompt_template, item->question)
                                    : lm_strdup(item->question);
    if (!user)
        return LM_ENOMEM;
    struct tok_ids ids = { 0 };
    int rc = chat_encode(sh->tok, p->chat, p->system, user, &ids);
    free(user);
    if (rc < 0)
        return rc;
    int64_t n_ctx = model_get_info(m)->n_ctx;
    if ((int64_t)ids.n >= n_ctx) {
        size_t n_ids = ids.n;
        tok_ids_free(&ids);
        return lm_err(LM_EFORMAT, "%s: problem %zu: the prompt has %zu tokens, the model's context only %lld",
                      sh->bench->path, i + 1, n_ids, (long long)n_ctx);
    }
    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = p->max_new_tokens;
    gp.stop_ids = p->stop_ids;
    gp.n_stop_ids = p->n_stop_ids;
    gp.skip_special = true;
    struct eval_text text = { NULL, 0, 0, false, sh };
    struct gen_result gr;
    rc = gen_run(m, sh->tok, ids.data, ids.n, &gp, on_gen_event, &text, &gr);
    tok_ids_free(&ids);
    if (rc == LM_ECANCELED && !text.oom) {
        free(text.data);
        return 0; /* stopped during the prompt */
    }
    if (rc == 0 && text.oom)
        rc = lm_err(LM_ENOMEM, "out of memory holding a response");
    if (rc < 0) {
        free(text.data);
        return rc;
    }
    if (gr.stop == GEN_STOP_CANCELLED) {
        free(text.data);
        return 0;
    }
    if (!text.data && !text_append(&text, "", 0))
        return lm_err(LM_ENOMEM, "out of memory holding a response");
    bool oom;
    res->response = text.data;
    res->extracted = eval_extract_answer(text.data, text.len, &oom);
    if (oom)
        return LM_ENOMEM;
    res->correct = eval_answer_matches(res->extracted, item->answer);
    res->tokens = gr.n_generated - (gr.stop == GEN_STOP_EOS ? 1 : 0);
    res->n_reflective = eval_count_reflective(text.data, text.len);
    res->stop = (int)gr.stop;
    res->done = true;
    return 0;
}

static void eval_worker(struct eval_shared *sh, struct model *m)
{
    for (;;) {
        pthread_mutex_lock(&sh->lock);
        if (atomic_load(&sh->stop) || sh->next >= sh->n_items) {
            pthread_mutex_unlock(&sh->lock);
            return;
        }
        size_t i = sh->next++;
        pthread_mutex_unlock(&sh->lock);

        struct eval_result res = { 0 };
        int rc = eval_one(sh, m, i, &res);

        pthread_mutex_lock(&sh->lock);
        if (rc < 0) {
            eval_results_deinit(&res, 1);
            if (!sh->rc) {
                sh->rc = rc;
                snprintf(sh->message, sizeof(sh->message), "%s", lm_last_error());
            }
            atomic_store(&sh->stop, true);
        } else if (res.done) {
            sh->results[i] = res;
            sh->n_done++;
            report_progress(sh);
        } else {
            eval_results_deinit(&res, 1);
        }
        pthread_mutex_unlock(&sh->lock);
    }
}

struct eval_thread {
    pthread_t thread;
    struct eval_shared *shared;
    struct model *model;
};

static void *eval_thread_main(void *arg)
{
    struct eval_thread *th = arg;
    eval_worker(th->shared, th->model);
    return NULL;
}

int eval_run(struct model *const *models, int n_models, const struct tok *t,
             const struct eval_bench *b, size_t n_items, const struct eval_params *p,
             lm_progress_fn progress, void *ud, struct eval_result *results)
{
    if (n_models < 1 || !t || n_items > b->n || p->max_new_tokens <= 0)
        return lm_err(LM_EINVAL, "eval: bad arguments (%d models, %zu of %zu problems)", n_models,
                      n_items, b->n);
    struct eval_shared sh = {
        .models = models, .tok = t, .bench = b, .n_items = n_items, .params = p,
        .progress = progress, .ud = ud, .results = results,
    };
    atomic_init(&sh.stop, false);
    if (pthread_mutex_init(&sh.lock, NULL) != 0)
        return lm_err(LM_ENOMEM, "eval: cannot create a mutex");
    size_t n_threads = (size_t)n_models < n_items ? (size_t)n_models : n_items;
    struct eval_thread *threads = NULL;
    size_t n_started = 0;
    if (n_threads > 1) {
        threads = lm_calloc(n_threads - 1, sizeof(*threads));
        if (!threads) {
            pthread_mutex_destroy(&sh.lock);
            return LM_ENOMEM;
        }
        for (size_t k = 0; k + 1 < n_threads; k++) {
            threads[k].shared = &sh;
            threads[k].model = models[k + 1];
            if (pthread_create(&threads[k].thread, NULL, eval_thread_main, &threads[k]) != 0)
                break; /* run with the threads we have */
            n_started++;
        }
    }
    eval_worker(&sh, models[0]);
    for (size_t k = 0; k < n_started; k++)
        pthread_join(threads[k].thread, NULL);
    free(threads);
    pthread_mutex_destroy(&sh.lock);
    if (sh.rc)
        return lm_err(sh.rc, "%s", sh.message);
    return 0;
}

void eval_summarize(const struct eval_result *results, size_t n, struct eval_summary *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        if (!results[i].done)
            continue;
        out->n++;
        out->n_correct += results[i].correct;
        out->n_reflective += results[i].n_reflective > 0;
        out->total_tokens += results[i].tokens;
    }
    if (out->n) {
        out->accuracy = (double)out->n_correct / (double)out->n;
        out->mean_tokens = (double)out->total_tokens / (double)out->n;
        out->reflective = (double)out->n_reflective / (double)out->n;
    }
}

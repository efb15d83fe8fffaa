/* Evaluation scoring: answer extraction, number comparison, reflective
 * phrases, the JSONL reader, templates and the aggregate. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval.h"
#include "fsutil.h"
#include "lm_error.h"
#include "test.h"

/* eval_extract_answer on a C string, compared with `expected` (NULL: none). */
static int extracts(const char *text, const char *expected)
{
    char *got = eval_extract_answer(text, strlen(text), NULL);
    int ok = expected ? got && strcmp(got, expected) == 0 : got == NULL;
    if (!ok)
        printf("      got %s%s%s, expected %s\n", got ? "'" : "", got ? got : "(none)", got ? "'" : "",
               expected ? expected : "(none)");
    free(got);
    return ok;
}

static size_t reflective(const char *text)
{
    return eval_count_reflective(text, strlen(text));
}

static void test_extraction(void)
{
    TEST_COND("boxed integer", extracts("So x = 4. \\boxed{4}", "4"));
    TEST_COND("nested braces kept whole", extracts("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"));
    TEST_COND("deeply nested braces", extracts("\\boxed{{a}{b{c}}}", "{a}{b{c}}"));
    TEST_COND("the last of several boxed answers", extracts("\\boxed{3} no, \\boxed{5}.", "5"));
    TEST_COND("unbalanced last box skipped", extracts("\\boxed{7} then \\boxed{8", "7"));
    TEST_COND("boxed in math dollars", extracts("$\\boxed{-12}$", "-12"));
    TEST_COND("space before the brace", extracts("\\boxed {9}", "9"));
    TEST_COND("The answer is N.", extracts("37+45-19 = 82-19 = 63. The answer is 63.", "63"));
    TEST_COND("the answer is, lower case, negative", extracts("so the answer is -5", "-5"));
    TEST_COND("answer with a colon and dollars", extracts("The answer is: $1,234$.", "1,234"));
    TEST_COND("decimal answer keeps its point", extracts("The answer is 3.5.", "3.5"));
    TEST_COND("the answer ends at the sentence", extracts("The answer is 12. Wait, yes.", "12"));
    TEST_COND("last 'answer is' wins", extracts("The answer is 1.\nThe answer is 2.", "2"));
    TEST_COND("boxed beats 'the answer is'", extracts("\\boxed{7}. The answer is 8.", "7"));
    TEST_COND("'answer is' inside a word is not one", extracts("Theanswer is 3", NULL));
    TEST_COND("no answer", extracts("I am not sure what to do here.", NULL));
    TEST_COND("empty text", extracts("", NULL));
    TEST_COND("empty box is no answer", extracts("\\boxed{}", NULL));
    TEST_COND("answer after </think> wins over the think block",
              extracts("<think>\nThe answer is 5. Wait, let me double-check.\n</think>\nThe answer is 6.", "6"));
    TEST_COND("boxed inside think only: still found",
              extracts("<think>\n\\boxed{41}\n</think>\nI am done.", "41"));
    TEST_COND("unterminated think block: answer inside it",
              extracts("<think>\n2+2 = 4. The answer is 4", "4"));
}

static int matches(const char *a, const char *b)
{
    return eval_answer_matches(a, b);
}

static void test_numbers(void)
{
    double v = 0;
    bool is_int = false;
    TEST_COND("parse -42 as an integer", eval_parse_number("-42", &v, &is_int) && v == -42 && is_int);
    TEST_COND("parse 1,234,567", eval_parse_number("1,234,567", &v, &is_int) && v == 1234567 && is_int);
    TEST_COND("reject bad thousands groups 12,34", !eval_parse_number("12,34", &v, &is_int));
    TEST_COND("parse 3/4", eval_parse_number("3/4", &v, &is_int) && v == 0.75 && !is_int);
    TEST_COND("parse -\\frac{1}{8}", eval_parse_number("-\\frac{1}{8}", &v, &is_int) && v == -0.125);
    TEST_COND("parse \\dfrac{3}{2}", eval_parse_number("\\dfrac{3}{2}", &v, &is_int) && v == 1.5);
    TEST_COND("parse 0.5 as not an integer", eval_parse_number("0.5", &v, &is_int) && v == 0.5 && !is_int);
    TEST_COND("parse $7$ and 50%", eval_parse_number("$7$", &v, &is_int) && v == 7 &&
              eval_parse_number("50%", &v, &is_int) && v == 50);
    TEST_COND("reject 1/0", !eval_parse_number("1/0", &v, &is_int));
    TEST_COND("reject text", !eval_parse_number("x = 3", &v, &is_int));
    TEST_COND("reject two numbers", !eval_parse_number("3 4", &v, &is_int));

    TEST_COND("63 matches 63", matches("63", "63"));
    TEST_COND("-5 matches -5, not 5", matches("-5", "-5") && !matches("5", "-5"));
    TEST_COND("1,234 matches 1234", matches("1,234", "1234"));
    TEST_COND("1/2 matches 0.5", matches("1/2", "0.5"));
    TEST_COND("\\frac{1}{3} matches 0.3333333", matches("\\frac{1}{3}", "0.3333333"));
    TEST_COND("2.0 matches 2", matches("2.0", "2"));
    TEST_COND("1/3 does not match 0.33", !matches("1/3", "0.33"));
    TEST_COND("integers compare exactly: 123456789 vs 123456788", !matches("123456789", "123456788"));
    TEST_COND("no answer never matches", !matches(NULL, "3"));
    TEST_COND("text answers compare without spaces", matches("x + 1", "x+1"));
    TEST_COND("different text answers differ", !matches("(1, 2)", "(2, 1)"));
}

static void test_reflective(void)
{
    TEST_COND("Wait at the start counts", reflective("Wait, let me think.") == 1);
    TEST_COND("lower-case wait counts", reflective("hmm wait.") == 1);
    TEST_COND("waiting and awaited do not count", reflective("waiting for the awaited bus") == 0);
    TEST_COND("double-check and double-checking count",
              reflective("Let me double-check. Double-checking again.") == 2);
    TEST_COND("re-examine counts, case-insensitive", reflective("RE-EXAMINE the sum") == 1);
    TEST_COND("let me check counts", reflective("Let me check: 2+2=4.") == 1);
    TEST_COND("recap counts, recapture does not", reflective("To recap: yes. recapture no") == 1);
    TEST_COND("let me just verify and let me just check count",
              reflective("Let me just verify. let me just check.") == 2);
    TEST_COND("Wait, let me double-check counts both phrases", reflective("Wait, let me double-check: 3.") == 2);
    TEST_COND("plain working is not reflective", reflective("37+45-19 = 82-19 = 63. The answer is 63.") == 0);
    TEST_COND("'let me just' alone is not reflective", reflective("let me just add them") == 0);
}

static void test_template(void)
{
    char *s = eval_apply_template("Q: {question}\nAgain: {question}", "1+1?");
    TEST_COND("template replaces every {question}", s && strcmp(s, "Q: 1+1?\nAgain: 1+1?") == 0);
    free(s);
    s = eval_apply_template(EVAL_DEFAULT_TEMPLATE, "Compute 2+3.");
    TEST_COND("default template appends the paper's instruction on a new line",
              s && strcmp(s, "Compute 2+3.\nPlease reason step by step, and put your final answer "
                             "within \\boxed{}.") == 0);
    free(s);
}

/* Writes `text` to a temporary file and loads it as a benchmark. */
static int load_text(const char *text, struct eval_bench *b, char *path, size_t path_size)
{
    snprintf(path, path_size, "/tmp/ms_test_eval_%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    fclose(f);
    int rc = eval_bench_load(path, b);
    return rc;
}

static void test_bench(void)
{
    char path[256];
    struct eval_bench b;
    int rc = load_text("{\"question\": \"Compute 2+3.\", \"answer\": 5, \"nops\": 1}\n\n"
                       "{\"question\": \"Half of 1?\", \"answer\": \"1/2\"}\r\n"
                       "{\"question\": \"Big\", \"answer\": -1.25}", &b, path, sizeof(path));
    TEST_COND("bench: three problems read, blank line skipped", rc == 0 && b.n == 3);
    if (rc == 0 && b.n == 3) {
        TEST_COND("bench: numeric answer kept as text 5", strcmp(b.items[0].answer, "5") == 0);
        TEST_COND("bench: string answer kept", strcmp(b.items[1].answer, "1/2") == 0);
        TEST_COND("bench: question kept", strcmp(b.items[0].question, "Compute 2+3.") == 0);
        TEST_COND("bench: negative decimal answer", strcmp(b.items[2].answer, "-1.25") == 0);
    }
    eval_bench_deinit(&b);

    rc = load_text("{\"question\": \"a\", \"answer\": 1}\n{\"question\": \"b\"}\n", &b, path, sizeof(path));
    TEST_COND("bench: missing answer names the line",
              rc == LM_EFORMAT && strstr(lm_last_error(), ":2: \"answer\" is missing"));
    rc = load_text("{\"question\": 3, \"answer\": 1}\n", &b, path, sizeof(path));
    TEST_COND("bench: non-string question is an error",
              rc == LM_EFORMAT && strstr(lm_last_error(), ":1: \"question\" must be a string"));
    rc = load_text("{\"question\": \"a\", \"answer\": 1}\n{\"question\": \"b\", \n", &b, path, sizeof(path));
    TEST_COND("bench: malformed JSON names file and line",
              rc == LM_EFORMAT && strstr(lm_last_error(), path) && strstr(lm_last_error(), ":2: malformed JSON"));
    rc = load_text("[1, 2]\n", &b, path, sizeof(path));
    TEST_COND("bench: a non-object line is an error", rc == LM_EFORMAT && strstr(lm_last_error(), ":1:"));
    rc = load_text("\n  \n", &b, path, sizeof(path));
    TEST_COND("bench: an empty file is an error", rc == LM_EFORMAT && strstr(lm_last_error(), "no problems"));
    unlink(path);
    rc = eval_bench_load("/nonexistent/bench.jsonl", &b);
    TEST_COND("bench: a missing file is an I/O error naming it",
              rc == LM_EIO && strstr(lm_last_error(), "/nonexistent/bench.jsonl"));
}

static void test_summary(void)
{
    struct eval_result r[4] = { 0 };
    r[0] = (struct eval_result){ .done = true, .correct = true, .tokens = 10, .n_reflective = 0 };
    r[1] = (struct eval_result){ .done = true, .correct = false, .tokens = 20, .n_reflective = 3 };
    r[2] = (struct eval_result){ .done = false, .correct = true, .tokens = 99, .n_reflective = 1 };
    r[3] = (struct eval_result){ .done = true, .correct = true, .tokens = 30, .n_reflective = 1 };
    struct eval_summary s;
    eval_summarize(r, 4, &s);
    TEST_COND("summary counts only finished problems", s.n == 3 && s.n_correct == 2 && s.total_tokens == 60);
    TEST_NEAR("summary accuracy", s.accuracy, 2.0 / 3.0, 1e-12);
    TEST_NEAR("summary mean tokens", s.mean_tokens, 20.0, 1e-12);
    TEST_NEAR("summary reflective share", s.reflective, 2.0 / 3.0, 1e-12);
    eval_summarize(r, 0, &s);
    TEST_COND("empty summary is all zero", s.n == 0 && s.accuracy == 0 && s.mean_tokens == 0);
}

/* Stops the run after `left` more reports. */
static bool stop_after(double frac, const char *what, void *ud)
{
    (void)frac;
    (void)what;
    int *left = ud;
    return --*left > 0;
}

/* eval_run on the committed golden Qwen2 model: the same results with one
 * or two models running at once, and a clean stop when asked. */
static void test_run(void)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char *dir = lm_path_join(src ? src : ".", "tests/golden/qwen2-bf16-tied");
    char *bench_path = lm_path_join(src ? src : ".", "tests/fixtures/eval-bench.jsonl");
    struct model_dir *d = dir ? model_dir_open(dir) : NULL;
    struct tok *t = dir ? tok_load(dir) : NULL;
    struct eval_bench b = { 0 };
    int brc = bench_path ? eval_bench_load(bench_path, &b) : -1;
    TEST_COND("run: golden model, tokenizer and bench load", d && t && brc == 0 && b.n == 6);
    if (!d || !t || brc != 0) {
        printf("      %s\n", lm_last_error());
        goto out;
    }
    struct model_params mp = model_default_params();
    mp.n_threads = 1;
    struct model_source msrc = model_dir_source(d);
    struct model *m[2] = { model_load(model_dir_config(d), &msrc, mp), model_load(model_dir_config(d), &msrc, mp) };
    TEST_COND("run: two copies of the model load", m[0] && m[1]);
    if (!m[0] || !m[1])
        goto out_models;
    /* What `eval` uses for this model: its template's system prompt, and
     * <|im_end|> and <|endoftext|> (also the config's EOS) as stops. */
    int32_t stops[2] = { 258, 256 };
    struct eval_params ep = {
        .prompt_template = EVAL_DEFAULT_TEMPLATE, .chat = CHAT_FORMAT_CHATML,
        .system = "You are a tiny test model.", .max_new_tokens = 24, .stop_ids = stops, .n_stop_ids = 2,
    };
    struct eval_result one[6] = { 0 }, two[6] = { 0 }, cut[6] = { 0 };
    int rc1 = eval_run(m, 1, t, &b, 6, &ep, NULL, NULL, one);
    int rc2 = eval_run(m, 2, t, &b, 6, &ep, NULL, NULL, two);
    TEST_COND("run: one and two models both finish", rc1 == 0 && rc2 == 0);
    bool same = true;
    for (int i = 0; i < 6; i++)
        same &= one[i].done && two[i].done && one[i].tokens == two[i].tokens &&
                one[i].response && two[i].response && strcmp(one[i].response, two[i].response) == 0;
    TEST_COND("run: every response is the same with one or two models", same);
    struct eval_summary s;
    eval_summarize(one, 6, &s);
    TEST_COND("run: the total of 124 tokens `eval` reports, no answer right", s.n == 6 && s.total_tokens == 124 &&
              s.n_correct == 0);
    bool bounded = true;
    for (int i = 0; i < 6; i++)
        bounded &= one[i].tokens >= 0 && one[i].tokens <= 24;
    TEST_COND("run: lengths stay within max_new_tokens", bounded);
    int left = 2;
    int rc3 = eval_run(m, 1, t, &b, 6, &ep, stop_after, &left, cut);
    size_t n_done = 0;
    for (int i = 0; i < 6; i++)
        n_done += cut[i].done;
    TEST_COND("run: a progress callback returning false stops with LM_ECANCELED", rc3 == LM_ECANCELED);
    TEST_COND("run: a stopped run keeps the problems it finished", n_done >= 1 && n_done < 6);
    eval_results_deinit(one, 6);
    eval_results_deinit(two, 6);
    eval_results_deinit(cut, 6);
out_models:
    model_free(m[0]);
    model_free(m[1]);
out:
    eval_bench_deinit(&b);
    tok_free(t);
    model_dir_close(d);
    free(dir);
    free(bench_path);
}

int main(void)
{
    test_extraction();
    test_numbers();
    test_reflective();
    test_template();
    test_bench();
    test_summary();
    test_run();
    return test_report();
}

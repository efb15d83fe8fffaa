/* tokenizer_config.json parsing: the chat template as a string or a list of
 * named templates, BOS/EOS tokens as strings or AddedToken objects, JSON
 * escapes decoded exactly, a missing file, and malformed input rejected with
 * the file and the key in the message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "test.h"
#include "tokenizer_config.h"

#define LABEL "m/tokenizer_config.json"

static int parse(const char *json, struct tokenizer_config *c)
{
    return tokenizer_config_parse(json, strlen(json), LABEL, c);
}

static bool str_is(const char *got, const char *want)
{
    return got && strcmp(got, want) == 0;
}

static void expect_error(const char *descr, const char *json, size_t len, const char *needle)
{
    struct tokenizer_config c;
    int rc = tokenizer_config_parse(json, len, LABEL, &c);
    bool ok = rc == LM_EFORMAT && strstr(lm_last_error(), needle) && strstr(lm_last_error(), LABEL) &&
              !c.present && !c.path && !c.chat_template && !c.bos_token && !c.eos_token;
    char d[256];
    snprintf(d, sizeof d, "%s: LM_EFORMAT naming '%s'", descr, needle);
    TEST_COND(d, ok);
    if (!ok)
        printf("      rc %d: %s\n", rc, lm_last_error());
    tokenizer_config_deinit(&c);
}

#define EXPECT_ERROR(descr, json, needle) expect_error(descr, json, sizeof(json) - 1, needle)

static void test_values(void)
{
    struct tokenizer_config c;
    /* Qwen2.5 style: bos null, eos a string, the template with \n escapes. */
    int rc = parse("{\"add_bos_token\": false, \"bos_token\": null, \"eos_token\": \"<|im_end|>\","
                   " \"pad_token\": \"<|endoftext|>\", \"model_max_length\": 131072,"
                   " \"chat_template\": \"{{- '<|im_start|>system\\\\nYou are Qwen.<|im_end|>\\\\n' }}\\n\","
                   " \"added_tokens_decoder\": {\"151643\": {\"content\": \"<|endoftext|>\", \"special\": true}}}",
                   &c);
    TEST_COND("Qwen2.5 style config parses", rc == 0 && c.present && str_is(c.path, LABEL));
    TEST_COND("chat_template decoded exactly (\\\\n stays a backslash-n, \\n is a newline)",
              str_is(c.chat_template, "{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}\n"));
    TEST_COND("bos_token null is NULL", c.bos_token == NULL);
    TEST_COND("eos_token string", str_is(c.eos_token, "<|im_end|>"));
    tokenizer_config_deinit(&c);
    TEST_COND("deinit empties the struct", !c.path && !c.chat_template && !c.eos_token && !c.present);

    /* DeepSeek-R1-Distill style: AddedToken objects, \u escapes. */
    rc = parse("{\"add_bos_token\": true, \"legacy\": true,"
               " \"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<\\uff5cbegin\\u2581of\\u2581sentence\\uff5c>\","
               " \"lstrip\": false, \"normalized\": true, \"rstrip\": false, \"single_word\": false},"
               " \"eos_token\": {\"__type\": \"AddedToken\", \"content\": \"<｜end▁of▁sentence｜>\"},"
               " \"chat_template\": \"{{'<｜User｜>' + m}}{{'<\\uff5cAssistant\\uff5c><think>\\\\n'}}\"}", &c);
    TEST_COND("R1 style config parses", rc == 0 && c.present);
    TEST_COND("bos_token from an AddedToken's content, \\u escapes decoded to UTF-8",
              str_is(c.bos_token, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
    TEST_COND("eos_token from an AddedToken's content (raw UTF-8 kept)",
              str_is(c.eos_token, "<｜end▁of▁sentence｜>"));
    TEST_COND("chat_template with escaped and raw full-width bars",
              str_is(c.chat_template, "{{'<｜User｜>' + m}}{{'<｜Assistant｜><think>\\n'}}"));
    tokenizer_config_deinit(&c);

    /* Every JSON escape, a surrogate pair, and \u0000 cutting the C string. */
    rc = parse("{\"chat_template\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u2028|\"}", &c);
    TEST_COND("all JSON escapes decode exactly",
              rc == 0 && str_is(c.chat_template, "\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xe2\x80\xa8|"));
    tokenizer_config_deinit(&c);

    /* A list of named templates: the first entry's. */
    rc = parse("{\"chat_template\": [{\"name\": \"default\", \"template\": \"<|im_start|>A\"},"
               " {\"name\": \"tool_use\", \"template\": \"<|start_header_id|>B\"}]}", &c);
    TEST_COND("list of named templates: the first one", rc == 0 && str_is(c.chat_template, "<|im_start|>A"));
    tokenizer_config_deinit(&c);
    rc = parse("{\"chat_template\": []}", &c);
    TEST_COND("an empty list is no template", rc == 0 && c.present && c.chat_template == NULL);
    tokenizer_config_deinit(&c);

    rc = parse("{\"chat_template\": \"\"}", &c);
    TEST_COND("an empty template stays \"\" (not absent)", rc == 0 && str_is(c.chat_template, ""));
    tokenizer_config_deinit(&c);
    rc = parse(" {\"model_max_length\": 4096, \"chat_template\": null}\n\n", &c);
    TEST_COND("absent or null keys: all NULL, still present", rc == 0 && c.present && !c.chat_template &&
              !c.bos_token && !c.eos_token);
    tokenizer_config_deinit(&c);

    /* Only the top-level key counts, and the first of duplicates. */
    rc = parse("{\"x\": {\"chat_template\": \"nested\"}, \"chat_template\": \"top\", \"chat_template\": \"dup\"}", &c);
    TEST_COND("top-level chat_template only, first of duplicates", rc == 0 && str_is(c.chat_template, "top"));
    tokenizer_config_deinit(&c);

    /* Keys not read here may hold anything. */
    rc = parse("{\"pad_token\": 5, \"unk_token\": [1], \"additional_special_tokens\": {\"a\": \"\\u00e9\"},"
               " \"eos_token\": \"</s>\"}", &c);
    TEST_COND("other keys are not checked", rc == 0 && str_is(c.eos_token, "</s>"));
    TEST_COND("a pad_token id and an unk_token list are ignored", !c.pad_token && !c.unk_token);
    tokenizer_config_deinit(&c);

    /* What the GGUF writer takes besides: pad/unk strings, add_*_token. */
    rc = parse("{\"pad_token\": {\"__type\": \"AddedToken\", \"content\": \"<pad>\"}, \"unk_token\": \"<unk>\","
               " \"add_bos_token\": true, \"add_eos_token\": \"yes\"}", &c);
    TEST_COND("pad_token from an AddedToken, unk_token from a string", rc == 0 && str_is(c.pad_token, "<pad>") &&
              str_is(c.unk_token, "<unk>"));
    TEST_COND("add_bos_token true: 1; add_eos_token not a boolean: -1", c.add_bos_token == 1 && c.add_eos_token == -1);
    tokenizer_config_deinit(&c);
    rc = parse("{\"add_eos_token\": false}", &c);
    TEST_COND("add_eos_token false: 0; add_bos_token absent: -1", rc == 0 && c.add_eos_token == 0 && c.add_bos_token == -1);
    tokenizer_config_deinit(&c);
}

static void test_errors(void)
{
    EXPECT_ERROR("not JSON", "{\"chat_template\": \"a\" \"b\"}", "invalid JSON");
    EXPECT_ERROR("empty text", "", "invalid JSON near byte 0");
    EXPECT_ERROR("truncated after the template", "{\"chat_template\": \"<|im_start|>\", \"x\": ", "invalid JSON");
    EXPECT_ERROR("invalid escape", "{\"chat_template\": \"a\\x\"}", "invalid JSON");
    EXPECT_ERROR("lone high surrogate", "{\"chat_template\": \"\\ud800x\"}", "invalid JSON");
    EXPECT_ERROR("lone low surrogate", "{\"chat_template\": \"\\udc00\"}", "invalid JSON");
    EXPECT_ERROR("top level a list", "[{\"chat_template\": \"a\"}]", "expected a JSON object at the top level");
    EXPECT_ERROR("data after the object", "{\"chat_template\": \"a\"} {}", "unexpected data after the JSON object at byte 23");
    EXPECT_ERROR("chat_template a number", "{\"chat_template\": 5}", "'chat_template' must be a string or a list");
    EXPECT_ERROR("chat_template an object", "{\"chat_template\": {\"template\": \"a\"}}",
                 "'chat_template' must be a string or a list");
    EXPECT_ERROR("list entry a string", "{\"chat_template\": [{\"name\": \"a\", \"template\": \"t\"}, \"x\"]}",
                 "'chat_template[1]' must be a {\"name\", \"template\"} object");
    EXPECT_ERROR("list entry without template", "{\"chat_template\": [{\"name\": \"default\"}]}",
                 "'chat_template[0].template' must be a string");
    EXPECT_ERROR("list entry template null", "{\"chat_template\": [{\"name\": \"d\", \"template\": null}]}",
                 "'chat_template[0].template' must be a string");
    EXPECT_ERROR("list entry name a number", "{\"chat_template\": [{\"name\": 1, \"template\": \"t\"}]}",
                 "'chat_template[0].name' must be a string");
    EXPECT_ERROR("bos_token a number", "{\"bos_token\": 1}",
                 "'bos_token' must be a string, an AddedToken object or null");
    EXPECT_ERROR("eos_token a list", "{\"eos_token\": [\"</s>\"]}",
                 "'eos_token' must be a string, an AddedToken object or null");
    EXPECT_ERROR("AddedToken without content", "{\"bos_token\": {\"__type\": \"AddedToken\"}}",
                 "'bos_token.content' must be a string");
    EXPECT_ERROR("AddedToken content a number", "{\"eos_token\": {\"content\": 2}}",
                 "'eos_token.content' must be a string");
    EXPECT_ERROR("invalid UTF-8 in chat_template", "{\"chat_template\": \"ab\xff\"}",
                 "'chat_template' is not valid UTF-8 (byte 2 of the string)");
    EXPECT_ERROR("overlong UTF-8 in eos_token", "{\"eos_token\": \"\xc0\xaf\"}",
                 "'eos_token' is not valid UTF-8 (byte 0 of the string)");
    EXPECT_ERROR("UTF-8 surrogate in bos_token content", "{\"bos_token\": {\"content\": \"x\xed\xa0\x80\"}}",
                 "'bos_token.content' is not valid UTF-8 (byte 1 of the string)");
    EXPECT_ERROR("truncated UTF-8 in a later list entry",
                 "{\"chat_template\": [{\"template\": \"ok\"}, {\"template\": \"\xe2\x82\"}]}",
                 "'chat_template[1].template' is not valid UTF-8");
}

static void test_files(void)
{
    char dir[] = "/tmp/ms_tokcfg_XXXXXX";
    if (!mkdtemp(dir)) {
        TEST_COND("temporary directory", 0);
        return;
    }
    char *path = lm_path_join(dir, "tokenizer_config.json");
    struct tokenizer_config c;

    int rc = tokenizer_config_load(path, &c);
    TEST_COND("a missing file: 0, not present, no fields",
              rc == 0 && !c.present && !c.chat_template && !c.bos_token && !c.eos_token);
    tokenizer_config_deinit(&c);

    static const char text[] = "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"<|im_start|>\"}\n";
    rc = lm_write_file_atomic(path, text, sizeof(text) - 1);
    rc = rc ? rc : tokenizer_config_load(path, &c);
    TEST_COND("a file on disk loads, named by its path", rc == 0 && c.present && str_is(c.path, path) &&
              str_is(c.chat_template, "<|im_start|>") && str_is(c.eos_token, "<|im_end|>"));
    tokenizer_config_deinit(&c);

    static const char bad[] = "{\"chat_template\": true}";
    rc = lm_write_file_atomic(path, bad, sizeof(bad) - 1);
    rc = rc ? rc : tokenizer_config_load(path, &c);
    TEST_COND("a malformed file: LM_EFORMAT naming its path and the key",
              rc == LM_EFORMAT && strstr(lm_last_error(), path) && strstr(lm_last_error(), "'chat_template'"));
    tokenizer_config_deinit(&c);
    unlink(path);

    /* A directory in the file's place reads as missing (as chat.c did). */
    mkdir(path, 0755);
    rc = tokenizer_config_load(path, &c);
    TEST_COND("a directory named tokenizer_config.json counts as missing", rc == 0 && !c.present);
    tokenizer_config_deinit(&c);
    rmdir(path);

    /* The checked-in golden model's file. */
    const char *src = getenv("MS_SOURCE_DIR");
    char golden[1024];
    snprintf(golden, sizeof golden, "%s/tests/golden/qwen2-bf16-tied/tokenizer_config.json", src ? src : "..");
    rc = tokenizer_config_load(golden, &c);
    static const char head[] = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n'";
    TEST_COND("the qwen2 golden's tokenizer_config.json: eos <|im_end|>, no bos, a ChatML template",
              rc == 0 && c.present && !c.bos_token && str_is(c.eos_token, "<|im_end|>") && c.chat_template &&
              strncmp(c.chat_template, head, sizeof(head) - 1) == 0 && strlen(c.chat_template) == 465);
    if (rc)
        printf("      %s\n", lm_last_error());
    tokenizer_config_deinit(&c);

    tokenizer_config_deinit(NULL);
    free(path);
    rmdir(dir);
}

int main(void)
{
    test_values();
    test_errors();
    test_files();
    return test_report();
}

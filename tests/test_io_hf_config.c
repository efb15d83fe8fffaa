/* config.json parsing: architecture keys, defaults, rope settings in both
 * places, llama3 rope scaling, EOS lists, rewrites for merged outputs, and
 * errors naming the key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "hf_config.h"
#include "lm_error.h"
#include "test.h"

static int parse(const char *json, struct hf_config *c)
{
    return hf_config_parse(json, strlen(json), "config.json", c);
}

static void expect_error(const char *descr, const char *json, const char *needle)
{
    struct hf_config c;
    int rc = parse(json, &c);
    bool ok = rc == LM_EFORMAT && strstr(lm_last_error(), needle) && strstr(lm_last_error(), "config.json");
    TEST_COND(descr, ok);
    if (!ok)
        printf("      rc %d: %s\n", rc, lm_last_error());
    hf_config_deinit(&c);
}

int main(void)
{
    struct hf_config c;
    const char *qwen =
        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": 1536,"
        " \"intermediate_size\": 8960, \"num_hidden_layers\": 28, \"num_attention_heads\": 12,"
        " \"num_key_value_heads\": 2, \"vocab_size\": 151936, \"max_position_embeddings\": 4096,"
        " \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-06, \"tie_word_embeddings\": true,"
        " \"torch_dtype\": \"bfloat16\", \"eos_token_id\": 151643, \"rope_scaling\": null}";
    TEST_COND("Qwen2.5-Math-1.5B config parses", parse(qwen, &c) == 0);
    TEST_COND("arch qwen2 with q/k/v biases", c.arch == HF_ARCH_QWEN2 && c.attention_bias);
    TEST_COND("sizes read", c.hidden_size == 1536 && c.intermediate_size == 8960 && c.num_hidden_layers == 28 &&
              c.num_attention_heads == 12 && c.num_key_value_heads == 2 && c.vocab_size == 151936);
    TEST_COND("head_dim derived as hidden / heads = 128", c.head_dim == 128);
    TEST_COND("tied embeddings", c.has_tie_word_embeddings && c.tie_word_embeddings);
    TEST_NEAR("rms_norm_eps", c.rms_norm_eps, 1e-6, 0);
    TEST_COND("one EOS id", c.n_eos_token_ids == 1 && c.eos_token_ids[0] == 151643);
    TEST_COND("no rope scaling", c.rope_scaling_type == NULL);
    hf_config_deinit(&c);

    const char *llama =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,"
        " \"num_hidden_layers\": 32, \"num_attention_heads\": 32, \"num_key_value_heads\": 8,"
        " \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
        " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
        " \"eos_token_id\": [128001, 128008, 128009], \"dtype\": \"bfloat16\","
        " \"rope_parameters\": {\"rope_theta\": 500000.0}}";
    TEST_COND("R1-Distill-Llama style config parses", parse(llama, &c) == 0);
    TEST_COND("arch llama, untied by default, no biases", c.arch == HF_ARCH_LLAMA && !c.tie_word_embeddings &&
              !c.has_tie_word_embeddings && !c.attention_bias);
    TEST_NEAR("rope_theta from rope_parameters", c.rope_theta, 500000.0, 0);
    TEST_COND("llama3 rope scaling read", c.rope_scaling_type && strcmp(c.rope_scaling_type, "llama3") == 0 &&
              c.rope_scaling_factor == 8.0 && c.rope_scaling_high_freq_factor == 4.0 &&
              c.rope_scaling_original_max_position_embeddings == 8192);
    TEST_COND("EOS list of three", c.n_eos_token_ids == 3 && c.eos_token_ids[2] == 128009);
    TEST_COND("\"dtype\" read as torch_dtype", c.torch_dtype && strcmp(c.torch_dtype, "bfloat16") == 0);
    TEST_COND("num_key_value_heads kept", c.num_key_value_heads == 8);
    hf_config_deinit(&c);

    const char *qwen3 = "{\"model_type\": \"qwen3\", \"hidden_size\": 1024, \"num_attention_heads\": 16,"
                        " \"head_dim\": 128, \"rope_theta\": 1000000}";
    TEST_COND("Qwen3 config parses", parse(qwen3, &c) == 0);
    TEST_COND("Qwen3 keeps its explicit head_dim (128, not 64) and kv heads default to heads",
              c.arch == HF_ARCH_QWEN3 && c.head_dim == 128 && c.num_key_value_heads == 16);
    hf_config_deinit(&c);

    TEST_COND("unknown model_type parses as unknown arch",
              parse("{\"model_type\": \"mamba\"}", &c) == 0 && c.arch == HF_ARCH_UNKNOWN);
    hf_config_deinit(&c);

    expect_error("not JSON", "{\"hidden_size\": ", "invalid JSON");
    expect_error("not an object", "[1, 2]", "object");
    expect_error("negative size", "{\"hidden_size\": -4}", "hidden_size");
    expect_error("fractional layer count", "{\"num_hidden_layers\": 2.5}", "num_hidden_layers");
    expect_error("string where a number belongs", "{\"vocab_size\": \"lots\"}", "vocab_size");
    expect_error("tie flag not a bool", "{\"tie_word_embeddings\": 1}", "tie_word_embeddings");
    expect_error("bad eos list", "{\"eos_token_id\": [1, \"x\"]}", "eos_token_id");
    expect_error("rope_scaling not an object", "{\"rope_scaling\": 3}", "rope_scaling");

    /* Rewriting a config for a merged output keeps other keys. */
    char dir[] = "/tmp/ms-test-cfg-XXXXXX";
    TEST_COND("temp dir", mkdtemp(dir) != NULL);
    char src[64], dst[64];
    snprintf(src, sizeof(src), "%s/src.json", dir);
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    lm_write_file_atomic(src, qwen, strlen(qwen));
    TEST_COND("rewrite", hf_config_write_output(src, dst, false, "float32", 152064) == 0);
    TEST_COND("rewritten config parses", hf_config_load(dst, &c) == 0);
    TEST_COND("tie, dtype and vocab changed; the rest kept", !c.tie_word_embeddings && c.vocab_size == 152064 &&
              strcmp(c.torch_dtype, "float32") == 0 && c.max_position_embeddings == 4096 && c.hidden_size == 1536);
    hf_config_deinit(&c);

    const char *other = "{\"model_type\": \"qwen2\", \"hidden_size\": 1536, \"max_position_embeddings\": 131072,"
                        " \"torch_dtype\": \"float32\", \"tie_word_embeddings\": false, \"sliding_window\": 4096}";
    snprintf(dst, sizeof(dst), "%s/other.json", dir);
    lm_write_file_atomic(dst, other, strlen(other));
    char *diff = hf_config_diff(src, "quick", dst, "long");
    TEST_COND("diff reports max_position_embeddings with both values",
              diff && strstr(diff, "max_position_embeddings: quick 4096 vs long 131072"));
    TEST_COND("diff ignores dtype and tying", diff && !strstr(diff, "torch_dtype") && !strstr(diff, "tie_word"));
    TEST_COND("diff reports keys only one side has", diff && strstr(diff, "sliding_window") && strstr(diff, "(absent)"));
    free(diff);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("      could not remove %s\n", dir);
    return test_report();
}

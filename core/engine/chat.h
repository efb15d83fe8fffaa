/* Chat formats: turning a system prompt and one user message into the text
 * a chat model expects before its reply, and finding which format a model
 * uses from the chat template in its directory.
 *
 * The formats, as the models' own Jinja templates render a single user
 * turn with add_generation_prompt=True (checked against the templates
 * shipped in tokenizer_config.json):
 *
 *   chatml       Qwen2 / Qwen2.5 / Qwen3:
 *                  <|im_start|>system\n{system}<|im_end|>\n
 *                  <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
 *                The system block is always there in Qwen2.5 templates: when
 *                no system prompt is given they insert their default, "You
 *                are Qwen, created by Alibaba Cloud. You are a helpful
 *                assistant." (Qwen2.5-Math: "Please reason step by step, and
 *                put your final answer within \boxed{}."). Qwen3 templates
 *                have no default and then omit the block.
 *   deepseek-r1  DeepSeek-R1-Distill-Qwen / -Llama:
 *                  {bos}{system}<｜User｜>{user}<｜Assistant｜><think>\n
 *                bos is <｜begin▁of▁sentence｜>; the system prompt, if any, is
 *                pasted right after it with no markers; DeepSeek advise none,
 *                so there is no default.
 *   llama3       Llama 3 Instruct:
 *                  <|begin_of_text|>[<|start_header_id|>system<|end_header_id|>\n\n
 *                  {system}<|eot_id|>]<|start_header_id|>user<|end_header_id|>\n\n
 *                  {user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
 *                with system and user trimmed of surrounding white space as
 *                the template's `| trim` does. (Llama 3.1's template also
 *                writes a system block with "Cutting Knowledge Date" lines
 *                when no system prompt is given; that is not reproduced.)
 *   none         the text as it is, after the tokenizer's BOS when its
 *                post-processor adds one (as Hugging Face's tokenizer(text)).
 *
 * Detection ("auto") reads the "chat_template" string of
 * tokenizer_config.json (or a chat_template.jinja file) and looks for marker
 * substrings: "<｜Assistant｜>" or "<｜User｜>" -> deepseek-r1,
 * "<|start_header_id|>" -> llama3, "<|im_start|>" -> chatml; else none.
 * For ChatML it also extracts the template's default system prompt: the
 * string literal '<|im_start|>system\n...<|im_end|>' that does not splice in
 * a message. */
#ifndef MS_CORE_ENGINE_CHAT_H
#define MS_CORE_ENGINE_CHAT_H

#include <stdbool.h>

#include "tokenizer.h"

enum chat_format {
    CHAT_FORMAT_NONE,
    CHAT_FORMAT_CHATML,
    CHAT_FORMAT_DEEPSEEK_R1,
    CHAT_FORMAT_LLAMA3,
};

/* "none", "chatml", "deepseek-r1", "llama3". */
const char *chat_format_name(enum chat_format f);
/* Parses one of those names; "auto" sets *is_auto (and *out to NONE).
 * LM_EINVAL naming the accepted values otherwise. */
int chat_format_parse(const char *name, enum chat_format *out, bool *is_auto);

/* Qwen2.5's default system prompt, used by chatml when neither the user nor
 * a detected template supplies one. */
#define CHAT_QWEN25_DEFAULT_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

/* What detection found. */
struct chat_detected {
    enum chat_format format;
    bool has_template;       /* a template was found at all */
    char *default_system;    /* ChatML template's default system prompt, or NULL */
    char reason[256];        /* one line: which file, which marker */
};

/* Detects the format from the template text alone; `source` names it in
 * the reason. 0 or LM_ENOMEM. */
int chat_detect_template(const char *template_text, const char *source, struct chat_detected *out);

/* Reads `model_dir`/tokenizer_config.json's "chat_template" (a string, or
 * the first "template" of a list of named templates; see
 * io/tokenizer_config.h), else `model_dir`/chat_template.jinja, and detects
 * the format. A directory with neither gives CHAT_FORMAT_NONE and says so in
 * the reason. Errors only for files that exist but cannot be read
 * (LM_EIO), or a tokenizer_config.json that is not a JSON object or holds a
 * key of the wrong type or invalid UTF-8 (LM_EFORMAT, naming file and key). */
int chat_detect_dir(const char *model_dir, struct chat_detected *out);
void chat_detected_deinit(struct chat_detected *d);

/* The system prompt a format uses when the user gives none: ChatML takes the
 * detected template's default when a ChatML template was detected (possibly
 * none, as for Qwen3), else Qwen2.5's; the other formats have none (NULL).
 * `detected` may be NULL. */
const char *chat_default_system(enum chat_format f, const struct chat_detected *detected);

/* The prompt text for one user turn (see the formats above); `system` NULL
 * or ignored for none. `bos` is the text of the BOS token for deepseek-r1
 * and llama3 (NULL: "<｜begin▁of▁sentence｜>" / "<|begin_of_text|>").
 * Heap string, caller frees; NULL on allocation failure. */
char *chat_format_prompt(enum chat_format f, const char *system, const char *user, const char *bos);

/* chat_format_prompt() encoded with `t`: special tokens in the text are
 * recognised for the chat formats (as apply_chat_template does); for none
 * the text is plain and tok_bos_id() is put first when the tokenizer has
 * one. The BOS text for deepseek-r1 / llama3 is the tokenizer's BOS token,
 * else the format's standard one when the vocabulary has it, else nothing.
 * Ids are appended to `out`. */
int chat_encode(const struct tok *t, enum chat_format f, const char *system, const char *user,
                struct tok_ids *out);

struct hf_config;
/* Appends (without duplicates) the ids that end a generation: those,
 * present in `t`, of the tokens that end an assistant turn (<|im_end|>
 * always, plus the format's own: <|eot_id|> for llama3,
 * <｜end▁of▁sentence｜> for deepseek-r1; and <|endoftext|>), then the
 * eos_token_id list of `cfg` (the model's config.json; NULL: none). */
int chat_stop_ids(const struct tok *t, enum chat_format f, const struct hf_config *cfg,
                  struct tok_ids *ids);

#endif

/* What a tensor name says about its place in a decoder-only transformer:
 * its layer, its module group (for per-module statistics), its projection.
 * Works on HF names (model.layers.N.self_attn.q_proj.weight,
 * model.embed_tokens.weight, model.norm.weight, lm_head.weight). */
#ifndef MS_IO_TENSOR_NAME_H
#define MS_IO_TENSOR_NAME_H

#include <stdbool.h>

enum tn_group {
    TN_GROUP_EMBED,
    TN_GROUP_ATTN,
    TN_GROUP_MLP,
    TN_GROUP_NORM,
    TN_GROUP_LM_HEAD,
    TN_GROUP_OTHER,
    TN_GROUP_COUNT
};

struct tn_info {
    int  layer;         /* -1 for tensors outside the layer stack */
    enum tn_group group;
    char proj[24];      /* "q_proj", "down_proj", "input_layernorm", ... or "" */
};

void tn_classify(const char *name, struct tn_info *out);

/* "embed", "attn", "mlp", "norm", "lm_head", "other". */
const char *tn_group_name(enum tn_group g);

/* Whether `module` (from a recipe override) selects this tensor: "self_attn"
 * or "attn", "mlp", a projection name (q_proj ... down_proj), "norm" (every
 * norm weight), "embed", "lm_head", or else a substring of the full name. */
bool tn_match_module(const char *name, const struct tn_info *info, const char *module);

/* Orders names by (layer, name) with non-layer tensors placed naturally:
 * embeddings first, then layers in numeric order, then the rest. */
int tn_compare_names(const char *a, const char *b);

#endif

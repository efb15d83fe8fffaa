#include "tensor_name.h"

#include <stdlib.h>
#include <string.h>

static const char *const group_names[TN_GROUP_COUNT] = {
    [TN_GROUP_EMBED] = "embed", [TN_GROUP_ATTN] = "attn", [TN_GROUP_MLP] = "mlp",
    [TN_GROUP_NORM] = "norm",   [TN_GROUP_LM_HEAD] = "lm_head", [TN_GROUP_OTHER] = "other",
};

const char *tn_group_name(enum tn_group g)
{
    return (unsigned)g < TN_GROUP_COUNT ? group_names[g] : "?";
}

/* Finds ".layers.N." (or a leading "layers.N.") and returns N, or -1. */
static int parse_layer(const char *name, const char **after)
{
    const char *p = name;
    while ((p = strstr(p, "layers.")) != NULL) {
        if (p == name || p[-1] == '.') {
            const char *q = p + 7;
            if (*q >= '0' && *q <= '9') {
                long v = 0;
                while (*q >= '0' && *q <= '9' && v < 1000000)
                    v = v * 10 + (*q++ - '0');
                if (*q == '.' || *q == '\0') {
                    if (after)
                        *after = *q ? q + 1 : q;
                    return (int)v;
                }
            }
        }
        p += 7;
    }
    return -1;
}

void tn_classify(const char *name, struct tn_info *out)
{
    const char *rest = name;
    memset(out, 0, sizeof(*out));
    out->layer = parse_layer(name, &rest);
    out->group = TN_GROUP_OTHER;

    if (strstr(name, "norm"))
        out->group = TN_GROUP_NORM;
    else if (strstr(name, "embed_tokens") || strstr(name, "wte") || strstr(name, "tok_embeddings"))
        out->group = TN_GROUP_EMBED;
    else if (strncmp(name, "lm_head", 7) == 0 || strstr(name, ".lm_head") || strstr(name, "output.weight") == name)
        out->group = TN_GROUP_LM_HEAD;
    else if (strstr(name, "self_attn") || strstr(name, ".attn.") || strstr(name, "attention"))
        out->group = TN_GROUP_ATTN;
    else if (strstr(name, "mlp") || strstr(name, "feed_forward"))
        out->group = TN_GROUP_MLP;

    /* The projection: the component before ".weight"/".bias" inside the layer. */
    if (out->layer >= 0) {
        const char *end = strrchr(rest, '.');
        size_t len = end ? (size_t)(end - rest) : strlen(rest);
        const char *start = rest;
        for (const char *q = rest; q < rest + len; q++)
            if (*q == '.')
                start = q + 1;
        len = (size_t)(rest + len - start);
        if (len >= sizeof(out->proj))
            len = sizeof(out->proj) - 1;
        memcpy(out->proj, start, len);
        out->proj[len] = '\0';
    }
}

bool tn_match_module(const char *name, const struct tn_info *info, const char *module)
{
    if (strcmp(module, "self_attn") == 0 || strcmp(module, "attn") == 0)
        return info->group == TN_GROUP_ATTN ||
               (info->group == TN_GROUP_NORM && strstr(name, "self_attn") != NULL);
    if (strcmp(module, "mlp") == 0)
        return info->group == TN_GROUP_MLP;
    if (strcmp(module, "norm") == 0)
        return info->group == TN_GROUP_NORM;
    if (strcmp(module, "embed") == 0)
        return info->group == TN_GROUP_EMBED;
    if (strcmp(module, "lm_head") == 0)
        return info->group == TN_GROUP_LM_HEAD;
    if (info->proj[0] && strcmp(module, info->proj) == 0)
        return true;
    return strstr(name, module) != NULL;
}

static int rank_of(const char *name, int *layer)
{
    struct tn_info info;
    tn_classify(name, &info);
    *layer = info.layer;
    if (info.layer >= 0)
        return 1;
    if (info.group == TN_GROUP_EMBED)
        return 0;
    return 2;
}

int tn_compare_names(const char *a, const char *b)
{
    int la, lb;
    int ra = rank_of(a, &la), rb = rank_of(b, &lb);
    if (ra != rb)
        return ra < rb ? -1 : 1;
    if (la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

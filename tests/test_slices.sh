#!/usr/bin/env bash
# Layer stacking: a recipe with "slices" (method passthrough) merges into a
# model whose layers are the slices' in order: the tensor names, the bytes
# of every tensor (copied from the input layer its slice names), the layer
# count in config.json, and the engine running the stacked model from the
# recipe. $1 = the mergescope binary; MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
py=/usr/bin/python3
[ -x "$py" ] || { echo "python3 is needed to read the safetensors files"; exit 1; }
tmp=$(mktemp -d /tmp/ms-test-slices-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$MS_SOURCE_DIR/tests/testlib.sh"
"$mk" "$tmp/m" 3 >/dev/null || { echo "cannot make fixtures"; exit 1; }
m="$tmp/m"

# Layers [0, 2) of quick, then [1, 3) of long: 4 layers. The recipe's base
# is quick; embeddings come from the first slice (quick), the final norm
# and lm_head from the last (long).
cat >"$tmp/stack.json" <<JSON
{
  "format": "mergescope-recipe/1",
  "base": "m/quick",
  "models": [ { "name": "long", "path": "m/long" } ],
  "method": "passthrough",
  "output": { "dtype": "f32" },
  "slices": [
    { "sources": [ { "model": "base", "layers": [0, 2] } ] },
    { "sources": [ { "model": "long", "layers": [1, 3] } ] }
  ]
}
JSON

check "merge of the stacked recipe" run 0 "$ms" merge "$tmp/stack.json" -o "$tmp/out4"

# every output tensor: its name and its bytes against the input it copies
# (inputs are bf16 and the output f32, so the values are compared).
check "tensor names, values and num_hidden_layers follow the slices" "$py" - "$m" "$tmp/out4" <<'PY'
import json, struct, sys, re
def load(d):
    raw = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n]); hdr.pop("__metadata__", None)
    out = {}
    for k, v in hdr.items():
        a, b = v["data_offsets"]; buf = raw[8 + n + a:8 + n + b]
        if v["dtype"] == "F32":
            vals = struct.unpack("<%df" % (len(buf) // 4), buf)
        elif v["dtype"] == "BF16":
            vals = tuple(struct.unpack("<f", b"\0\0" + buf[i:i + 2])[0] for i in range(0, len(buf), 2))
        else:
            raise SystemExit("dtype " + v["dtype"])
        out[k] = vals
    return out
m, o = sys.argv[1], sys.argv[2]
quick, long_, out = load(m + "/quick"), load(m + "/long"), load(o)
layers = sorted({int(x) for k in out for x in re.findall(r"\.layers\.(\d+)\.", k)})
assert layers == [0, 1, 2, 3], layers
src = {0: (quick, 0), 1: (quick, 1), 2: (long_, 1), 3: (long_, 2)}
for k, v in out.items():
    mt = re.search(r"\.layers\.(\d+)\.", k)
    if mt:
        model, l = src[int(mt.group(1))]
        name = k.replace(mt.group(0), ".layers.%d." % l)
    else:
        model = quick if "embed_tokens" in k else long_
        name = k
        if name == "lm_head.weight" and name not in model:
            name = "model.embed_tokens.weight"
    assert model[name] == v, "tensor %s differs from %s" % (k, name)
per = len([k for k in quick if ".layers.0." in k])
assert len([k for k in out if ".layers." in k]) == 4 * per
cfg = json.load(open(o + "/config.json"))
assert cfg["num_hidden_layers"] == 4, cfg["num_hidden_layers"]
print("ok", len(out), "tensors")
PY

check "stats shows the output's 4 layers" \
    bash -c "run 0 '$ms' stats '$tmp/stack.json' --by layer && out_has 'layer 3' && ! grep -q 'layer 4' '$tmp/out'"
check "logits runs the stacked model from the recipe" \
    run 0 "$ms" logits "$tmp/stack.json" --ids 1,2,3 -o "$tmp/l.f32"
check "the recipe saved with the merge round-trips its slices" \
    bash -c "grep -q '\"slices\"' '$tmp/out4/mergescope-recipe.json' && run 0 '$ms' merge '$tmp/out4/mergescope-recipe.json' -o '$tmp/out4b' && cmp '$tmp/out4/model.safetensors' '$tmp/out4b/model.safetensors'"

# Errors name the key.
bad() { # bad JSON-SLICES MESSAGE
    printf '{"format": "mergescope-recipe/1", "base": "m/quick", "models": [{"name": "long", "path": "m/long"}], "method": "%s", "slices": %s}\n' "${3:-passthrough}" "$1" >"$tmp/bad.json"
    run 3 "$ms" merge "$tmp/bad.json" -o "$tmp/never" && err_has "$2"
}
check "a range beyond the model" bad '[{"sources": [{"model": "long", "layers": [2, 5]}]}]' \
    "slices[0].sources[0].layers: [2, 5] reaches beyond model 'long''s 3 layers (0-2)"
check "an empty range" bad '[{"sources": [{"model": "long", "layers": [2, 2]}]}]' \
    "slices[0].sources[0].layers: [2, 2] is empty (the end is excluded)"
check "an unknown model" bad '[{"sources": [{"model": "lng", "layers": [0, 1]}]}]' \
    "slices[0].sources[0].model: unknown model 'lng'"
check "two sources with passthrough" \
    bad '[{"sources": [{"model": "long", "layers": [0, 1]}, {"model": "base", "layers": [0, 1]}]}]' \
    "slices[0].sources: method 'passthrough' takes exactly one source per slice, got 2"
check "sources of different lengths" \
    bad '[{"sources": [{"model": "long", "layers": [0, 1]}, {"model": "base", "layers": [0, 2]}]}]' \
    "slices[0].sources[1].layers: 2 layers, but sources[0] gives 1"
check "slices with another method" bad '[{"sources": [{"model": "long", "layers": [0, 1]}]}]' \
    "slices: method 'linear' does not stack layers" linear
check "an unknown key in a source" bad '[{"sources": [{"model": "long", "layer_range": [0, 1]}]}]' \
    "slices[0].sources[0]: unknown key 'layer_range'"

check "export writes mergekit's slices: passthrough, one source and layer_range per slice" \
    bash -c "run 0 '$ms' export '$tmp/stack.json' --to mergekit && out_has 'merge_method: passthrough' && out_has 'layer_range: [0, 2]' && out_has 'layer_range: [1, 3]' && [ \$(grep -c '^  - sources:' '$tmp/out') = 2 ]"
"$ms" export "$tmp/stack.json" --to mergekit >"$tmp/stack-rt.yml" 2>/dev/null
check "... and the YAML merges to the same bytes (import(export(r)) = r)" \
    bash -c "run 0 '$ms' merge '$tmp/stack-rt.yml' -o '$tmp/rt' && run 0 '$ms' merge '$tmp/stack.json' -o '$tmp/rt0' && cmp '$tmp/rt/model.safetensors' '$tmp/rt0/model.safetensors'"
printf 'merge_method: passthrough\nslices:\n  - sources:\n      - model: quick\n        layer_range: [0, 2]\n      - model: long\n        layer_range: [0, 2]\n' >"$tmp/two.yml"
check "import: passthrough with two sources in a slice is refused, naming the key" \
    bash -c "run 3 '$ms' import '$tmp/two.yml' && err_has 'slices[0].sources: passthrough takes exactly one {model, layer_range} per slice'"

# The demo models have a tokenizer: generate runs a stacked demo recipe.
demo="$MS_SOURCE_DIR/demo"
cat >"$tmp/demo-stack.json" <<JSON
{
  "format": "mergescope-recipe/1",
  "base": "$demo/quick",
  "models": [ { "name": "long", "path": "$demo/long" } ],
  "method": "passthrough",
  "slices": [
    { "sources": [ { "model": "base", "layers": [0, 4] } ] },
    { "sources": [ { "model": "long", "layers": [2, 6] } ] }
  ]
}
JSON
check "generate runs a stacked recipe (8 layers from two 6-layer models)" \
    run 0 "$ms" generate "$tmp/demo-stack.json" -p "1+1=" -n 4 --chat none

report

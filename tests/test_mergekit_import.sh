#!/usr/bin/env bash
# mergekit YAML in: `import`, every command opening a .yml directly, the
# round trip import(export(r)) merging to the same bytes as r, the
# precedence of mergekit's settings, and the example set under
# tests/fixtures/mergekit (written by tests/tools/mergekit_examples.sh).
# $1 = the mergescope binary; MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
src="${MS_SOURCE_DIR:?MS_SOURCE_DIR not set}"
tmp=$(mktemp -d /tmp/ms-test-yaml-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

"$mk" "$tmp/m" 3 || { echo "cannot make fixtures"; exit 1; }
m="$tmp/m"

# ---- Round trip: import(export(r)) merges to the bytes of r ----
roundtrip() { # roundtrip RECIPE.json NAME
    local r="$1" name="$2" dir
    dir=$(dirname "$r")
    "$ms" export "$r" --to mergekit >"$dir/$name.rt.yml" 2>/dev/null &&
    "$ms" merge "$r" -o "$tmp/rt-a-$name" --threads 2 >/dev/null 2>&1 &&
    "$ms" merge "$dir/$name.rt.yml" -o "$tmp/rt-b-$name" --threads 2 >/dev/null 2>"$tmp/rt-err" &&
    cmp "$tmp/rt-a-$name/model.safetensors" "$tmp/rt-b-$name/model.safetensors" ||
    { echo "      round trip of $name:"; sed 's/^/      /' "$tmp/rt-err"; return 1; }
}
for d in ties ta; do
    cp "$src/demo/l2s-$d.json" "$tmp/demo-$d.json"
    sed -i "s#\"quick\"#\"$src/demo/quick\"#; s#\"path\": \"long\"#\"path\": \"$src/demo/long\"#; s#\"file\": \"calib.jsonl\"#\"file\": \"$src/demo/calib.jsonl\"#" "$tmp/demo-$d.json"
    check "demo l2s-$d: import(export(r)) merges to the same bytes" roundtrip "$tmp/demo-$d.json" "demo-$d"
done

cat >"$m/ov.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick", "weight": 0.7, "density": [0.9, 0.5] },
              { "name": "long", "path": "long", "weight": [0.2, 0.6, 0.4] } ],
  "method": "ties", "params": { "lambda": 0.9, "density": 0.6, "normalize": true },
  "overrides": [ { "layers": "0-1", "modules": "mlp", "params": { "weight": { "long": 0.5 } } },
                 { "modules": "self_attn", "params": { "density": 0.75 } },
                 { "layers": [2], "params": { "lambda": 1.25 } } ],
  "output": { "dtype": "bf16" } }
JSON
check "ties with gradients, per-model and layer overrides: round trip bytes" roundtrip "$m/ov.json" ov
cat >"$m/lin.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick", "weight": 0.25 }, { "name": "long", "path": "long", "weight": [0.5, 1] } ],
  "method": "linear", "params": { "normalize": true },
  "overrides": [ { "modules": "q_proj", "params": { "weight": { "quick": 2 } } } ],
  "output": { "dtype": "f32" } }
JSON
check "linear with a projection override: round trip bytes" roundtrip "$m/lin.json" lin
cat >"$m/slerp.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "quick", "models": [ { "name": "long", "path": "long" } ],
  "method": "slerp", "params": { "t": [0.2, 0.7] },
  "overrides": [ { "modules": "mlp", "params": { "t": 0.9 } } ], "output": { "dtype": "bf16" } }
JSON
check "slerp with a t gradient and a module override: round trip bytes" roundtrip "$m/slerp.json" slerp
cat >"$m/dare.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick", "weight": 0.5, "density": 0.5 }, { "name": "long", "path": "long", "weight": 0.5 } ],
  "method": "dare_linear", "params": { "density": 0.7, "rescale": "l1" }, "output": { "dtype": "f16" } }
JSON
check "dare_linear with rescale l1 (mergekit's default): round trip bytes" roundtrip "$m/dare.json" dare
cat >"$m/bc.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick", "weight": 1 }, { "name": "long", "path": "long", "weight": 0.5 } ],
  "method": "breadcrumbs_ties", "params": { "density": 0.6, "gamma": 0.1 }, "output": { "dtype": "bf16" } }
JSON
check "breadcrumbs_ties with gamma: round trip bytes" roundtrip "$m/bc.json" bc

cat >"$m/stock.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick" }, { "name": "long", "path": "long" } ],
  "method": "model_stock", "output": { "dtype": "f32" } }
JSON
check "model_stock: round trip bytes" roundtrip "$m/stock.json" stock
check "model_stock merges differently from the plain average (the check can fail)" \
    bash -c "sed 's/model_stock/linear/' '$m/stock.json' >'$m/avg.json' && run 0 '$ms' merge '$m/avg.json' -o '$tmp/avg' && ! cmp -s '$tmp/avg/model.safetensors' '$tmp/rt-a-stock/model.safetensors'"
# The methods after model_stock, each with a non-default parameter, so
# that an export or import that lost it would merge to other bytes.
newrt() { # newrt NAME METHOD PARAMS-JSON MODEL-FIELDS
    cat >"$m/$1.json" <<JSON
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick"$4 }, { "name": "long", "path": "long" } ],
  "method": "$2", "params": $3, "output": { "dtype": "f32" } }
JSON
}
newrt sce sce '{ "select_topk": 0.4 }' ''
check "sce with select_topk: round trip bytes" roundtrip "$m/sce.json" sce
check "sce: the exported YAML names select_topk" grep -q "select_topk: 0.4" "$m/sce.rt.yml"
newrt karcher karcher '{ "max_iter": 3, "tol": 1e-4 }' ''
check "karcher with max_iter and tol: round trip bytes" roundtrip "$m/karcher.json" karcher
newrt nuslerp nuslerp '{ "nuslerp_flatten": false, "nuslerp_row_wise": true }' ', "weight": 0.3'
check "nuslerp with weights, row_wise, no flatten: round trip bytes" roundtrip "$m/nuslerp.json" nuslerp
check "nuslerp: the exported YAML names both weights and its switches" \
    bash -c "grep -q 'weight: 0.3' '$m/nuslerp.rt.yml' && grep -q 'nuslerp_row_wise: true' '$m/nuslerp.rt.yml' && grep -q 'nuslerp_flatten: false' '$m/nuslerp.rt.yml'"
newrt mslerp multislerp '{ "normalize_weights": false, "eps": 1e-6 }' ', "weight": 0.4'
check "multislerp with weights, normalize_weights false: round trip bytes" roundtrip "$m/mslerp.json" mslerp
cat >"$m/fusion.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base", "models": [ { "name": "long", "path": "long" } ],
  "method": "arcee_fusion", "output": { "dtype": "bf16" } }
JSON
check "arcee_fusion: round trip bytes" roundtrip "$m/fusion.json" fusion
newrt ram ram '{ "epsilon": 0.001 }' ''
check "ram with epsilon: round trip bytes" roundtrip "$m/ram.json" ram
newrt ramplus ramplus_tl '{ "r": 0.5, "alpha": 0.3, "epsilon": 0.0001 }' ''
check "ramplus_tl with r, alpha, epsilon: round trip bytes" roundtrip "$m/ramplus.json" ramplus
check "ramplus_tl merges differently from ram (the check can fail)" \
    bash -c "! cmp -s '$tmp/rt-a-ram/model.safetensors' '$tmp/rt-a-ramplus/model.safetensors'"
# nuslerp and multislerp without base_model: mergekit's base-less form
# (the models themselves interpolated), a recipe without "base".
printf 'merge_method: nuslerp\nmodels:\n  - model: %s/quick\n    parameters: {weight: 1}\n  - model: %s/long\n    parameters: {weight: 3}\n' \
    "$m" "$m" >"$m/nobase.yml"
check "import reads nuslerp without base_model as a recipe without a base" \
    bash -c "run 0 '$ms' import '$m/nobase.yml' -o '$m/nobase.json' && ! grep -q '\"base\"' '$m/nobase.json' && grep -q '\"method\": \"nuslerp\"' '$m/nobase.json'"
check "... which merges, and says it has no base" \
    bash -c "run 0 '$ms' merge '$m/nobase.json' -o '$tmp/nobase-out' && err_has 'the recipe has no base model: nuslerp merges the models themselves'"
sed 's#"models"#"base": "base", "models"#' "$m/nobase.json" >"$m/withbase.json"
check "... to other weights than the same recipe with a base" \
    bash -c "run 0 '$ms' merge '$m/withbase.json' -o '$tmp/withbase-out' && ! cmp -s '$tmp/nobase-out/model.safetensors' '$tmp/withbase-out/model.safetensors'"
cat >"$m/ms-nobase.json" <<'JSON'
{ "format": "mergescope-recipe/1",
  "models": [ { "name": "first", "path": "base" }, { "name": "quick", "path": "quick", "weight": 2 },
              { "name": "long", "path": "long" } ],
  "method": "multislerp", "output": { "dtype": "bf16" } }
JSON
check "export of a base-less multislerp writes no base_model and no warning about one" \
    bash -c "run 0 '$ms' export '$m/ms-nobase.json' --to mergekit && ! grep -q '^base_model' '$tmp/out' && ! grep -q 'needs a base model' '$tmp/err'"
check "base-less multislerp: round trip bytes" roundtrip "$m/ms-nobase.json" ms-nobase
check "import still refuses a task-vector method without base_model" \
    bash -c "sed 's/nuslerp/ties/' '$m/nobase.yml' >'$m/ties-nobase.yml' && run 3 '$ms' import '$m/ties-nobase.yml' && err_has 'needs base_model'"

# ---- import: the recipe it writes ----
cat >"$m/prec.yml" <<'YAML'
merge_method: task_arithmetic
base_model: base
models:
  - model: quick
    parameters:
      weight: 0.3
  - model: long
parameters:
  weight:
    - filter: mlp
      value: 0.8
    - value: 0.6
    - filter: self_attn   # never reached: the entry before matches everything
      value: 5
  lambda: 0.9
dtype: float32
out_dtype: bfloat16
YAML
check "import prints the recipe: global default, model value, filtered entry for the models without their own" \
    bash -c "run 0 '$ms' import '$m/prec.yml' && out_has '\"weight\": 0.6' && out_has '\"weight\": 0.3' && out_has '\"modules\": \"mlp\"' && out_has '\"long\": 0.8' && ! grep -q '\"quick\": 0.8' '$tmp/out' && ! grep -q ': 5' '$tmp/out' && out_has '\"dtype\": \"bf16\"' && out_has '\"lambda\": 0.9'"
sed 's/^dtype: float32$/dtype: bfloat16/' "$m/prec.yml" >"$m/prec-bf16.yml"
check "a command opening the YAML directly shows import's warnings (here the dtype one)" \
    bash -c "run 0 '$ms' stats '$m/prec-bf16.yml' --threads 1 && err_has 'mergekit computes in bfloat16, mergescope in float32'"
cat >"$m/prec.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick", "weight": 0.3 }, { "name": "long", "path": "long", "weight": 0.6 } ],
  "method": "task_arithmetic", "params": { "lambda": 0.9 },
  "overrides": [ { "modules": "mlp", "params": { "weight": { "long": 0.8 } } } ], "output": { "dtype": "bf16" } }
JSON
check "mergekit precedence (model, then global, first match): the YAML merges as the hand-written recipe" \
    bash -c "run 0 '$ms' merge '$m/prec.yml' -o '$tmp/p1' && run 0 '$ms' merge '$m/prec.json' -o '$tmp/p2' && cmp '$tmp/p1/model.safetensors' '$tmp/p2/model.safetensors'"
grep -v '"overrides"' "$m/prec.json" | sed 's/"method": "task_arithmetic", "params": { "lambda": 0.9 },/"method": "task_arithmetic", "params": { "lambda": 0.9 }, "output": { "dtype": "bf16" } }/' >"$m/prec-nofilter.json"
check "  ... and not as the recipe without the filtered entry (the check can fail)" \
    bash -c "run 0 '$ms' merge '$m/prec-nofilter.json' -o '$tmp/p3' && ! cmp -s '$tmp/p1/model.safetensors' '$tmp/p3/model.safetensors'"

cat >"$m/mfilt.yml" <<'YAML'
merge_method: ties
base_model: base
models:
  - model: quick
    parameters:
      density:
        - filter: self_attn
          value: 0.5
        - filter: mlp
          value: [0.25, 0.75]
  - model: long
    parameters:
      density: 0.9
parameters:
  density: 0.6
YAML
check "model-level filters without a default fall through to the global value; first filter last in the overrides" \
    bash -c "run 0 '$ms' import '$m/mfilt.yml' && out_has '\"density\": 0.6' && out_has '\"density\": 0.9' && [ \$(grep -n '\"mlp\"' '$tmp/out' | cut -d: -f1) -lt \$(grep -n '\"self_attn\"' '$tmp/out' | cut -d: -f1) ]"
cat >"$m/mfilt.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick" }, { "name": "long", "path": "long", "density": 0.9 } ],
  "method": "ties", "params": { "density": 0.6 },
  "overrides": [ { "modules": "mlp", "params": { "density": { "quick": [0.25, 0.75] } } },
                 { "modules": "self_attn", "params": { "density": { "quick": 0.5 } } } ] }
JSON
check "  ... and merges as the hand-written recipe" \
    bash -c "run 0 '$ms' merge '$m/mfilt.yml' -o '$tmp/f1' && run 0 '$ms' merge '$m/mfilt.json' -o '$tmp/f2' && cmp '$tmp/f1/model.safetensors' '$tmp/f2/model.safetensors'"

check "import -o writes a recipe that loads back with paths from its folder" \
    bash -c "mkdir -p '$tmp/sub' && run 0 '$ms' import '$m/prec.yml' -o '$tmp/sub/r.json' && grep -q '\"../m/quick\"' '$tmp/sub/r.json' && run 0 '$ms' merge '$tmp/sub/r.json' -o '$tmp/p4' && cmp '$tmp/p1/model.safetensors' '$tmp/p4/model.safetensors'"
check "import -o refuses a .yml name (exit 2)" bash -c "run 2 '$ms' import '$m/prec.yml' -o '$tmp/x.yml'"
check "stats opens a .yaml directly" \
    bash -c "cp '$m/prec.yml' '$m/prec.yaml' && run 0 '$ms' stats '$m/prec.yaml' && out_match '^layer 0'"
check "import warns that mergekit computes in dtype" \
    bash -c "printf 'merge_method: linear\nmodels:\n  - model: quick\n  - model: long\ndtype: bfloat16\n' >'$m/bf.yml' && run 0 '$ms' import '$m/bf.yml' && err_has 'warning: dtype bfloat16' && out_has '\"dtype\": \"bf16\"'"
check "rescale: true is l1; dare without rescale gets mergekit's default l1" \
    bash -c "run 0 '$ms' import '$src/tests/fixtures/mergekit/accept-dare-ties.yml' && out_has '\"rescale\": \"l1\"'"

# ---- Errors name the key and the line ----
err_case() { # err_case FILE TEXT...
    local f="$1"; shift
    run 3 "$ms" import "$f" || return 1
    for t in "$@"; do err_has "$t" || return 1; done
}
printf 'merge_method: linear\nmodels:\n  - model: quick\n    parameters:\n      weight: 1\n    bogus: 2\n' >"$m/e1.yml"
check "an unknown model key is an error naming it and its line" err_case "$m/e1.yml" "e1.yml:6:" "models[0].bogus: unknown key"
printf 'merge_method: linear\nmodels:\n  - model: quick\nparameters:\n  weight: [1, x]\n' >"$m/e2.yml"
check "a gradient with a non-number names the entry" err_case "$m/e2.yml" "e2.yml:5:" "parameters.weight[1]"
printf 'merge_method: dare_linear\nbase_model: base\nmodels:\n  - model: quick\nparameters:\n  rescale: false\n' >"$m/e3.yml"
check "rescale: false is not supported, said so" err_case "$m/e3.yml" "parameters.rescale: false"
printf 'merge_method: ties\nmodels:\n  - model: quick\n' >"$m/e4.yml"
check "a task-vector method without base_model" err_case "$m/e4.yml" "needs base_model"
printf 'merge_method: linear\nmodels:\n  - model: quick\nchat_template: chatml\n' >"$m/e5.yml"
check "chat_template is not supported yet, named" err_case "$m/e5.yml" "chat_template: not supported yet"
printf 'merge_method: linear\nmodels: [\n' >"$m/e6.yml"
check "invalid YAML names the line" err_case "$m/e6.yml" "e6.yml:" "invalid YAML"
printf 'merge_method: linear\nmodels:\n  - model: quick\nparameters:\n  weight: {filter: mlp, value: 1}\n' >"$m/e7.yml"
check "a lone {filter, value} outside a list is refused (mergekit cannot read it)" err_case "$m/e7.yml" "must be in a list"
printf 'merge_method: linear\nmodels:\n  - model: quick\n  - model: quick\nmerge_method: ties\n' >"$m/e8.yml"
check "a duplicate key is an error" err_case "$m/e8.yml" "merge_method: duplicate key"
printf 'merge_method: slerp\nbase_model: quick\nslices:\n  - sources:\n      - model: quick\n        layer_range: [0, 2]\n      - model: long\n        layer_range: [0, 2]\n' >"$m/e9.yml"
check "a slice of part of the layers is not supported yet" err_case "$m/e9.yml" "[0, 2] of a 3-layer model"

# ---- mergekit's documented examples (tests/fixtures/mergekit) ----
for f in "$src"/tests/fixtures/mergekit/accept-*.yml; do
    fx=$(basename "$f")
    cp "$f" "$m/$fx"
    check "example $fx imports" bash -c "run 0 '$ms' import '$m/$fx' && out_has '\"method\"'"
    check "example $fx merges" bash -c "run 0 '$ms' merge '$m/$fx' -o '$tmp/ex-$fx'"
done
for f in "$src"/tests/fixtures/mergekit/reject-*.yml; do
    fx=$(basename "$f")
    cp "$f" "$m/$fx"
    want=$(head -1 "$f" | sed 's/^# expect: //')
    check "example $fx is refused: $want" err_case "$m/$fx" "$want"
done
check "the slerp example's slices become the models: quick is the base, long the model" \
    bash -c "run 0 '$ms' import '$m/accept-slerp-slices.yml' && out_has '\"base\": \"quick\"' && out_has '\"path\": \"long\"' && ! grep -q '\"path\": \"quick\"' '$tmp/out'"
check "the ties example's filtered weight: long 0 by default, 0.5 on mlp" \
    bash -c "run 0 '$ms' import '$m/accept-ties-filters.yml' && out_match '\"weight\": 0\$' && out_has '\"long\": 0.5' && out_has '\"density\": [1, 0.7, 0.3]' && ! grep -q int8_mask '$tmp/out'"

report

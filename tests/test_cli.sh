#!/usr/bin/env bash
# The headless commands as a user runs them: help, exit codes, error
# messages, stats in three formats, merge output layout, export.
# $1 = the mergescope binary; MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
tmp=$(mktemp -d /tmp/ms-test-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

"$mk" "$tmp/m" 3 || { echo "cannot make fixtures"; exit 1; }
cat >"$tmp/m/ties.json" <<'JSON'
{
  "format": "mergescope-recipe/1",
  "base": "quick",
  "models": [ { "name": "long", "path": "long", "weight": 0.7 } ],
  "method": "ties",
  "params": { "lambda": 1.0, "density": 0.25, "normalize": true },
  "overrides": [ { "layers": "0-1", "modules": "mlp", "params": { "weight": { "long": 0.5 } } } ],
  "output": { "dtype": "bf16", "config_from": "long", "tokenizer_from": "long" }
}
JSON

check "top-level --help lists the commands and methods" \
    bash -c "run 0 '$ms' --help && out_has 'merge' && out_has 'ties' && out_has 'dare_ties'"
for cmd in stats merge export; do
    check "$cmd --help exits 0 with usage" bash -c "run 0 '$ms' $cmd --help && out_has 'usage: mergescope $cmd'"
done
check "unknown command exits 2" bash -c "run 2 '$ms' frobnicate && err_has 'unknown command'"
check "merge without -o exits 2" bash -c "run 2 '$ms' merge '$tmp/m/ties.json' && err_has 'missing -o'"
check "bad --dtype exits 2" bash -c "run 2 '$ms' merge '$tmp/m/ties.json' -o '$tmp/o' --dtype f8"
sed 's/"density": 0.25/"density": 0.2/' "$tmp/m/ties.json" > "$tmp/m/ties-k0.json"
# (k_proj and v_proj biases both have 4 entries: either may be the one named, by thread timing)
check "ties keeping no entry of a tensor (int(0.2 x 4) = 0) exits 3 naming it, as mergekit stops" \
    bash -c "run 3 '$ms' merge '$tmp/m/ties-k0.json' -o '$tmp/o-k0' && grep -qE 'self_attn\.[kv]_proj\.bias.: density 0\.2 of model 0' '$tmp/err' && err_has 'int(0.2 x 4) = 0'"

check "stats table by layer has a row per layer" \
    bash -c "run 0 '$ms' stats '$tmp/m/ties.json' && out_match '^layer 0' && out_match '^layer 2' && out_has 'rel(long)' && out_has 'sign_flip'"
for v in -v --verbose; do
    check "stats $v prints the peak memory" \
        bash -c "run 0 '$ms' stats '$tmp/m/ties.json' $v && err_has 'peak memory' && err_has 'RssAnon'"
done
check "stats csv has a header and one row per tensor (38 + lm_head)" \
    bash -c "run 0 '$ms' stats '$tmp/m/ties.json' --format csv --by tensor && out_match '^name,layer,n_elements,norm(long)' && [ \$(wc -l <'$tmp/out') -eq 40 ]"
check "stats json has rows with per-model numbers" \
    bash -c "run 0 '$ms' stats '$tmp/m/ties.json' --format json --by module && out_has '\"rows\"' && out_has '\"layer 1 mlp\"' && out_has '\"topk_energy\"'"
check "stats with --base/--model compares two task vectors" \
    bash -c "run 0 '$ms' stats --base '$tmp/m/base' --model '$tmp/m/quick' --model '$tmp/m/long' --density 0.5 && out_has 'cos(quick,long)' && out_has 'ties_conflict'"
check "stats on a missing directory exits 3 naming it" \
    bash -c "run 3 '$ms' stats --base '$tmp/m/nope' --model '$tmp/m/long' && err_has 'nope'"

check "merge writes an HF directory" \
    bash -c "run 0 '$ms' merge '$tmp/m/ties.json' -o '$tmp/merged' && for f in model.safetensors config.json tokenizer_config.json mergescope-recipe.json README.md; do [ -f '$tmp/merged/'\$f ] || exit 1; done"
check "merge reports configs that differ" bash -c "err_has 'max_position_embeddings'"
check "merged config says untied bf16" \
    bash -c "grep -q '\"tie_word_embeddings\":[[:space:]]*false' '$tmp/merged/config.json' && grep -q 'bfloat16' '$tmp/merged/config.json'"
check "rerunning the saved recipe gives identical weights" \
    bash -c "run 0 '$ms' merge '$tmp/merged/mergescope-recipe.json' -o '$tmp/merged2' --threads 1 && cmp '$tmp/merged/model.safetensors' '$tmp/merged2/model.safetensors'"
check "sharded merge writes an index" \
    bash -c "run 0 '$ms' merge '$tmp/m/ties.json' -o '$tmp/merged3' --shard-size 2KB && [ -f '$tmp/merged3/model.safetensors.index.json' ] && ls '$tmp/merged3' | grep -q 'model-00001-of-'"
check "merging again into a sharded directory as one file removes the stale shards" \
    bash -c "run 0 '$ms' merge '$tmp/m/ties.json' -o '$tmp/merged3' && [ -f '$tmp/merged3/model.safetensors' ] && ! ls '$tmp/merged3' | grep -q 'model-0000' && [ ! -f '$tmp/merged3/model.safetensors.index.json' ]"

check "logits of a recipe merged in memory equal those of the model merge wrote" \
    bash -c "run 0 '$ms' logits '$tmp/m/ties.json' --ids 1,5,7,30 -o '$tmp/a.f32' && run 0 '$ms' logits '$tmp/merged' --ids 1,5,7,30 -o '$tmp/b.f32' && [ \$(stat -c %s '$tmp/a.f32') -eq \$((4 * 32 * 4)) ] && cmp '$tmp/a.f32' '$tmp/b.f32'"
check "logits differ from the unmerged base's" \
    bash -c "run 0 '$ms' logits '$tmp/m/quick' --ids 1,5,7,30 -o '$tmp/c.f32' && ! cmp -s '$tmp/a.f32' '$tmp/c.f32'"
check "logits leave no temporary file beside the output" bash -c "! ls -A '$tmp' | grep -q tmp"
check "logits into a missing directory exit 1 naming the file" \
    bash -c "run 1 '$ms' logits '$tmp/m/quick' --ids 1,5 -o '$tmp/nodir/d.f32' && err_has 'nodir/' && [ ! -e '$tmp/nodir' ]"
cp "$tmp/c.f32" "$tmp/c-before.f32"
check "a failed logits run leaves the existing output as it was" \
    bash -c "run 2 '$ms' logits '$tmp/m/quick' --ids 1,500 -o '$tmp/c.f32' && cmp '$tmp/c.f32' '$tmp/c-before.f32'"

printf '{"format": "mergescope-recipe/1", "base": "quick", "models": [{"name": "long", "path": "long"}], "method": "ties", "bogus": 1}' >"$tmp/m/bad.json"
check "unknown recipe key exits 3 naming the key" bash -c "run 3 '$ms' merge '$tmp/m/bad.json' -o '$tmp/o' && err_has 'bogus'"
printf '{"format": "mergescope-recipe/1", "base": "quick", "models": [{"name": "long", "path": "long"}], "method": "ties", "params": {"density": 2}}' >"$tmp/m/range.json"
check "out-of-range parameter exits 3 naming it" bash -c "run 3 '$ms' merge '$tmp/m/range.json' -o '$tmp/o' && err_has 'params.density'"
printf '{"format": "mergescope-recipe/1", "base": "quick", "models": [' >"$tmp/m/trunc.json"
check "truncated recipe exits 3" bash -c "run 3 '$ms' merge '$tmp/m/trunc.json' -o '$tmp/o' && err_has 'trunc.json'"
check "failed merges leave no output and no staging directory" \
    bash -c "[ ! -e '$tmp/o' ] && ! ls '$tmp' | grep -q partial"
head -c 100 "$tmp/m/long/model.safetensors" >"$tmp/short.safetensors"
mkdir -p "$tmp/broken" && cp "$tmp/m/long/config.json" "$tmp/broken/" && mv "$tmp/short.safetensors" "$tmp/broken/model.safetensors"
check "a truncated weights file exits 3 naming the file" \
    bash -c "run 3 '$ms' stats --base '$tmp/m/quick' --model '$tmp/broken' && err_has 'broken/model.safetensors'"

check "export prints mergekit YAML" \
    bash -c "run 0 '$ms' export '$tmp/m/ties.json' --to mergekit && out_has 'merge_method: ties' && out_has 'base_model' && out_has 'density'"
check "export warns about what mergekit cannot express" bash -c "err_has 'warning'"
check "export to an unknown format exits 2" bash -c "run 2 '$ms' export '$tmp/m/ties.json' --to gguf"

report

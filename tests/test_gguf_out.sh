#!/usr/bin/env bash
# `mergescope merge RECIPE -o FILE.gguf`: the demo recipe merged to GGUF in
# bf16, f16, f32 and q8_0 (and, with the demo models relabelled as Llama, in
# bf16 and q8_0, whose q/k rows llama.cpp wants reordered), each read back
# with @huggingface/gguf (pinned in tests/package.json; `npm ci --prefix
# tests`) by gguf_check.mjs and compared with the safetensors merge of the
# same recipe: metadata, tokenizer, tensor infos, every tensor's bytes. Plus
# the command line around it: format inferred from the name, refusals, no
# staging left behind.
#
# usage: test_gguf_out.sh path/to/mergescope   (MS_SOURCE_DIR: the source tree)
set -u

bin=${1:?usage: test_gguf_out.sh path/to/mergescope}
src=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
tests=$src/tests
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$tests/testlib.sh"

fail_setup() {
    printf '%3d - %s: FAILED\n' 1 "$1"
    echo "0 passed, 1 failed"
    exit 1
}
command -v node >/dev/null 2>&1 || fail_setup "GGUF reference reader: node is not installed"
[ -d "$tests/node_modules/@huggingface/gguf" ] ||
    fail_setup "GGUF reference reader: tests/node_modules/@huggingface/gguf is missing: run \`npm ci --prefix tests\`"

recipe=$src/demo/l2s-ties.json
long=$src/demo/long

gguf_magic() { [ "$(head -c 4 "$1")" = GGUF ]; }
no_staging() { ! ls -d "$tmp"/*.partial-* >/dev/null 2>&1; }
checked() { # checked FILE.gguf REF_DIR DTYPE TOKENIZER_DIR
    (cd "$tests" && node gguf_check.mjs "$@")
}

# References: the same recipe as safetensors directories.
for d in bf16 f16 f32; do
    check "safetensors reference in $d" run 0 "$bin" merge "$recipe" -o "$tmp/ref-$d" --dtype "$d"
done

for d in bf16 f16 f32 q8_0; do
    check "merge to GGUF in $d" run 0 "$bin" merge "$recipe" -o "$tmp/m-$d.gguf" --format gguf --dtype "$d"
    check "$d: the file starts with GGUF" gguf_magic "$tmp/m-$d.gguf"
    ref=$tmp/ref-$d
    [ "$d" = q8_0 ] && ref=$tmp/ref-f32
    check "$d: @huggingface/gguf reads back the metadata, tokenizer and tensors written" \
        checked "$tmp/m-$d.gguf" "$ref" "$d" "$long"
done
check "no staging directory left behind" no_staging
check "Q8_0 file is smaller than the bf16 one" \
    test "$(stat -c %s "$tmp/m-q8_0.gguf")" -lt "$(stat -c %s "$tmp/m-bf16.gguf")"

# The same merge twice gives the same bytes, whatever the thread count.
mkdir "$tmp/t1" "$tmp/t2"
check "merge with 1 thread and with 2" \
    sh -c "'$bin' merge '$recipe' -o '$tmp/t1/m.gguf' --dtype q8_0 --threads 1 >/dev/null 2>&1 &&
           '$bin' merge '$recipe' -o '$tmp/t2/m.gguf' --dtype q8_0 --threads 2 >/dev/null 2>&1"
check "  same bytes" cmp "$tmp/t1/m.gguf" "$tmp/t2/m.gguf"

# Format from the name; refusals.
check "-o NAME.gguf writes GGUF without --format" run 0 "$bin" merge "$recipe" -o "$tmp/inferred.gguf"
check "inferred: GGUF bytes" gguf_magic "$tmp/inferred.gguf"
check "--dtype q8_0 without GGUF is a usage error" run 2 "$bin" merge "$recipe" -o "$tmp/dir" --dtype q8_0
check "  saying why" err_has "--dtype q8_0 needs --format gguf"
check "--shard-size with GGUF is a usage error, saying why" \
    bash -c "run 2 '$bin' merge '$recipe' -o '$tmp/s.gguf' --shard-size 1GB && err_has 'a GGUF is one file' && [ ! -e '$tmp/s.gguf' ]"
check "--format onnx is a usage error" run 2 "$bin" merge "$recipe" -o "$tmp/x.gguf" --format onnx
check "a GGUF file inside an input is refused" run 3 "$bin" merge "$recipe" -o "$long/x.gguf"
check "  naming the input" err_has "lies inside the input"
check "  and nothing is written there" test ! -e "$long/x.gguf"
mkdir "$tmp/adir.gguf"
check "a directory named .gguf is refused" run 3 "$bin" merge "$recipe" -o "$tmp/adir.gguf"
check "a missing parent directory is an error" run 1 "$bin" merge "$recipe" -o "$tmp/no/such/m.gguf"
check "  naming it" err_has "parent directory"
check "no staging directory left behind by the failures" no_staging

# Llama: the demo models relabelled (same weights, same tokenizer).
for m in quick long; do
    mkdir -p "$tmp/llama/$m"
    cp "$src/demo/$m"/* "$tmp/llama/$m/"
    sed -i 's/"Qwen2ForCausalLM"/"LlamaForCausalLM"/; s/"model_type": "qwen2"/"model_type": "llama"/' \
        "$tmp/llama/$m/config.json"
done
sed 's/"calibration": { "file": "calib.jsonl" }/"description": "llama"/' "$recipe" > "$tmp/llama/recipe.json"
check "Llama: safetensors reference in bf16 and f32" \
    sh -c "'$bin' merge '$tmp/llama/recipe.json' -o '$tmp/llama/ref-bf16' --dtype bf16 >/dev/null 2>&1 &&
           '$bin' merge '$tmp/llama/recipe.json' -o '$tmp/llama/ref-f32' --dtype f32 >/dev/null 2>&1"
for d in bf16 q8_0; do
    ref=$tmp/llama/ref-$d
    [ "$d" = q8_0 ] && ref=$tmp/llama/ref-f32
    check "Llama: merge to GGUF in $d" run 0 "$bin" merge "$tmp/llama/recipe.json" -o "$tmp/llama/m-$d.gguf" --dtype "$d"
    check "Llama $d: q/k rows in llama.cpp's order, everything else as for Qwen2" \
        checked "$tmp/llama/m-$d.gguf" "$ref" "$d" "$tmp/llama/long"
done

report

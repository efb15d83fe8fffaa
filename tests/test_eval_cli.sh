#!/usr/bin/env bash
# `eval` and `sweep` as a user runs them, on the committed golden Qwen2 model
# (random weights: it answers garbage, so accuracy is 0 and the response
# lengths, recorded once, are exact and must not depend on the thread count)
# and the small committed benchmark tests/fixtures/eval-bench.jsonl.
# $1 = the mergescope binary; MS_SOURCE_DIR = the source tree.
set -u
ms="$1"
src="${MS_SOURCE_DIR:?MS_SOURCE_DIR not set}"
model="$src/tests/golden/qwen2-bf16-tied"
bench="$src/tests/fixtures/eval-bench.jsonl"
tmp=$(mktemp -d /tmp/ms-test-eval-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

# What the golden model gives on the bench with -n 24 (recorded once; the
# engine's results do not depend on threads, and problems are independent).
golden='{"n": 6, "accuracy": 0, "mean_tokens": 20.666666666666668, "reflective": 0}'
export golden

# A recipe merging the golden model with itself: any task-vector method
# gives the model back exactly; linear without normalisation scales it.
cat >"$tmp/self.json" <<JSON
{
  "format": "mergescope-recipe/1",
  "base": "$model",
  "models": [ { "name": "same", "path": "$model", "weight": 1.0 } ],
  "method": "ties",
  "params": { "lambda": 1.0, "density": 0.5 }
}
JSON
cat >"$tmp/half.json" <<JSON
{
  "format": "mergescope-recipe/1",
  "base": "$model",
  "models": [ { "name": "same", "path": "$model", "weight": 0.5 } ],
  "method": "linear",
  "params": { "normalize": false }
}
JSON
printf '%s\n' '{"question": "a", "answer": 1}' '{"question": "b"}' >"$tmp/bad.jsonl"

check "eval --help exits 0 with usage" bash -c "run 0 '$ms' eval --help && out_has 'usage: mergescope eval'"
check "sweep --help exits 0 with usage" bash -c "run 0 '$ms' sweep --help && out_has 'usage: mergescope sweep'"
check "eval without --bench exits 2" bash -c "run 2 '$ms' eval '$model' && err_has '--bench'"
check "eval with a missing bench file exits 3 naming it" \
    bash -c "run 3 '$ms' eval '$model' --bench '$tmp/none.jsonl' && err_has 'none.jsonl'"
check "eval with a bad bench line exits 3 naming file and line" \
    bash -c "run 3 '$ms' eval '$model' --bench '$tmp/bad.jsonl' && err_has 'bad.jsonl:2: \"answer\" is missing'"
check "eval --prompt-template without {question} exits 2" \
    bash -c "run 2 '$ms' eval '$model' --bench '$bench' --prompt-template 'Q:' && err_has '{question}'"
check "eval --format json prints exactly n, accuracy, mean_tokens, reflective" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --format json --threads 1 && out_is \"\$golden\""
check "eval json is the same with 2 jobs" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --format json --threads 2 --jobs 2 && out_is \"\$golden\""
check "eval json is the same with 1 job on 3 threads" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --format json --threads 3 --jobs 1 && out_is \"\$golden\""
check "eval --limit 2 evaluates two problems" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --limit 2 --format json && out_has '{\"n\": 2, \"accuracy\": 0,'"
check "eval table has a header and one row" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 && out_has 'ACCURACY' && out_has 'MEAN_TOKENS' && [ \$(wc -l <\"\$tmp/out\") = 2 ] && out_has '20.7'"
check "eval --details writes one line per problem with every field" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --details '$tmp/d.jsonl' --format json &&
             [ \$(wc -l <'$tmp/d.jsonl') = 6 ] &&
             [ \$(grep -c '\"question\":.*\"answer\":.*\"response\":.*\"extracted\":null,\"correct\":false,\"tokens\":[0-9]*,\"reflective\":false}' '$tmp/d.jsonl') = 6 ] &&
             grep -q '\"answer\":\"63\"' '$tmp/d.jsonl' && grep -q '\"answer\":\"1,234\"' '$tmp/d.jsonl'"
check "eval --details tokens add up to mean_tokens" \
    bash -c "sum=0; for t in \$(grep -o '\"tokens\":[0-9]*' '$tmp/d.jsonl' | cut -d: -f2); do sum=\$((sum + t)); done; [ \$sum = 124 ]"
check "eval of a recipe merges in memory and gives the model back" \
    bash -c "run 0 '$ms' eval '$tmp/self.json' --bench '$bench' -n 24 --format json && out_is \"\$golden\""

check "sweep prints one row per combination (2 x 2)" \
    bash -c "run 0 '$ms' sweep '$tmp/self.json' --bench '$bench' -n 24 --vary params.lambda=0.5,1 --vary method=ties,task_arithmetic &&
             out_has 'params.lambda' && out_has 'LENGTH' && [ \$(grep -c '^0.5 \|^1 ' \"\$tmp/out\") = 4 ]"
check "sweep json: reference and every row equal the model (zero task vector)" \
    bash -c "run 0 '$ms' sweep '$tmp/self.json' --bench '$bench' -n 24 --vary params.lambda=0.5,1 --vary method=ties,task_arithmetic --format json &&
             out_has '\"reference\": {\"model\": \"$model\", \"n\": 6, \"accuracy\": 0, \"mean_tokens\": 20.666666666666668, \"reflective\": 0}' &&
             [ \$(grep -c '\"mean_tokens\": 20.666666666666668, \"length_change\": 0, \"reflective\": 0}' \"\$tmp/out\") = 4 ] &&
             out_has '{\"settings\": {\"params.lambda\": 0.5, \"method\": \"task_arithmetic\"}, \"n\": 6,'"
check "sweep over per-model weights: rows differ, weight 1 equals the reference" \
    bash -c "run 0 '$ms' sweep '$tmp/self.json' --bench '$bench' -n 24 --vary method=linear --vary params.normalize=false --vary models.same.weight=0.5,1,1.5 --format json &&
             out_has '\"models.same.weight\": 0.5}, \"n\": 6, \"accuracy\": 0, \"mean_tokens\": 24, \"length_change\": 0.1612903225806451,' &&
             out_has '\"models.same.weight\": 1}, \"n\": 6, \"accuracy\": 0, \"mean_tokens\": 20.666666666666668, \"length_change\": 0,' &&
             out_has '\"models.same.weight\": 1.5}, \"n\": 6, \"accuracy\": 0, \"mean_tokens\": ' &&
             ! grep -q '\"models.same.weight\": 1.5}, \"n\": 6, \"accuracy\": 0, \"mean_tokens\": 20.666666666666668,' \"\$tmp/out\""
check "a sweep row equals eval of the same recipe" \
    bash -c "run 0 '$ms' eval '$tmp/half.json' --bench '$bench' -n 24 --format json && out_is '{\"n\": 6, \"accuracy\": 0, \"mean_tokens\": 24, \"reflective\": 0}'"
check "sweep shows '-' for a varied parameter the row's method ignores" \
    bash -c "run 0 '$ms' sweep '$tmp/self.json' --bench '$bench' -n 8 --limit 1 --vary method=ties,task_arithmetic --vary params.density=0.3 &&
             grep -q '^task_arithmetic  -  ' \"\$tmp/out\""
check "eval --system changes the prompt" \
    bash -c "run 0 '$ms' eval '$model' --bench '$bench' -n 24 --system 'Be brief.' --format json && ! out_is \"\$golden\" >/dev/null && out_has '{\"n\": 6,'"

# A reference directory without tokenizer.json borrows the merges' tokenizer.
if [ -n "${MS_MKFIXTURE:-}" ] && "$MS_MKFIXTURE" "$tmp/trio" 1; then
    cp "$src/tests/fixtures/tiny-tokenizer.json" "$tmp/trio/quick/tokenizer.json"
    cat >"$tmp/trio/l2s.json" <<'JSON'
{
  "format": "mergescope-recipe/1",
  "base": "quick",
  "models": [ { "name": "long", "path": "long" } ],
  "method": "ties",
  "params": { "lambda": 1.0, "density": 0.5 },
  "output": { "config_from": "long", "tokenizer_from": "base" }
}
JSON
    printf '%s\n' '{"question": "one plus one", "answer": 2}' '{"question": "add 1 and 1", "answer": "2"}' >"$tmp/trio/bench.jsonl"
    check "sweep: a reference without a tokenizer uses the recipe's, one row per value" \
        bash -c "run 0 '$ms' sweep '$tmp/trio/l2s.json' --bench '$tmp/trio/bench.jsonl' -n 8 --vary params.lambda=0.5,0.75,1 &&
                 err_has 'has no tokenizer.json' && out_has 'reference $tmp/trio/long: n 2' &&
                 [ \$(grep -c '^0.5 \|^0.75 \|^1 ' \"\$tmp/out\") = 3 ]"
fi

check "sweep --vary params.densty names the key" \
    bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' --vary params.densty=0.1 && err_has '--vary params.densty: unknown parameter'"
check "sweep --vary of an unknown model names it" \
    bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' --vary models.lng.weight=1 && err_has \"no model 'lng'\""
check "sweep --vary method=foo names the method" \
    bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' --vary method=foo && err_has \"unknown method 'foo'\""
check "sweep --vary out of range exits 2" \
    bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' --vary params.density=2 && err_has 'params.density: 2 is out of range'"
check "sweep --vary of a number that is not one exits 2" \
    bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' --vary params.lambda=0.5,x && err_has \"'x' is not a number\""
check "sweep without --vary exits 2" bash -c "run 2 '$ms' sweep '$tmp/self.json' --bench '$bench' && err_has '--vary'"
check "sweep of a model directory exits 3" \
    bash -c "run 3 '$ms' sweep '$model' --bench '$bench' --vary params.lambda=1 && err_has 'recipe file'"

report

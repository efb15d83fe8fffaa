#!/usr/bin/env bash
# The bundled demo trio: it loads, each model solves a known problem under
# greedy decoding (golden text), eval gives the recorded numbers whatever the
# thread count, and the long-to-short recipes merge and shorten the answers.
# $1 = the mergescope binary.
set -u
ms="$1"
demo="${MS_SOURCE_DIR:?MS_SOURCE_DIR not set}/demo"
tmp=$(mktemp -d /tmp/ms-test-demo-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

q="Compute 987-734+367+748."
quick=$("$ms" generate "$demo/quick" -p "$q" -n 80 2>/dev/null)
check "quick answers with brief steps (golden text)" \
    same "$quick" "987-734+367+748 = 253+367+748 = 620+748 = 1368. The answer is 1368."
long=$("$ms" generate "$demo/long" -p "$q" -n 400 2>/dev/null)
check "long thinks, re-checks and gets the same answer" \
    bash -c '[[ "$1" == "<think>"* && "$1" == *"Wait, let me double-check: 620+748 = 1368. Yes."* && "$1" == *"</think>"*"The answer is 1368." ]]' _ "$long"
ties=$("$ms" generate "$demo/l2s-ties.json" -p "$q" -n 400 2>/dev/null)
check "the TIES merge answers correctly" bash -c '[[ "$1" == *"The answer is 1368."* ]]' _ "$ties"
check "... more briefly than long" bash -c '[ ${#1} -lt ${#2} ]' _ "$ties" "$long"

bench="$demo/arith-test.jsonl"
for t in 1 2; do
    check "eval quick, first 20 problems, $t thread(s)" same \
        "$("$ms" eval "$demo/quick" --bench "$bench" --limit 20 --format json --threads $t 2>/dev/null)" \
        '{"n": 20, "accuracy": 0.8, "mean_tokens": 45.8, "reflective": 0}'
done
check "eval long, first 20 problems" same \
    "$("$ms" eval "$demo/long" --bench "$bench" --limit 20 --format json --threads 2 --jobs 1 2>/dev/null)" \
    '{"n": 20, "accuracy": 0.8, "mean_tokens": 188.55, "reflective": 1}'
check "eval of the TIES recipe merged in memory, first 20 problems" same \
    "$("$ms" eval "$demo/l2s-ties.json" --bench "$bench" --limit 20 --format json 2>/dev/null)" \
    '{"n": 20, "accuracy": 0.6, "mean_tokens": 112.5, "reflective": 1}'

check "the demo recipes merge to disk" \
    bash -c '"$1" merge "$2/l2s-ties.json" -o "$3/ties" 2>/dev/null && "$1" merge "$2/l2s-ta.json" -o "$3/ta" 2>/dev/null && [ -f "$3/ties/model.safetensors" ] && [ -f "$3/ta/tokenizer.json" ]' \
    _ "$ms" "$demo" "$tmp"
check "the merged model on disk answers as the in-memory merge did" \
    same "$("$ms" generate "$tmp/ties" -p "$q" -n 400 2>/dev/null)" "$ties"
check "stats on the demo recipe has one row per layer (6) plus embed, norm, lm_head" \
    bash -c '[ $("$1" stats "$2/l2s-ties.json" --format csv 2>/dev/null | wc -l) -eq 10 ]' _ "$ms" "$demo"

report

#!/usr/bin/env bash
# The calibration-based methods from the command line, on the demo trio:
# `calibrate` (plan and results), merges that are the same bytes run after
# run and whatever the thread count, the merged model on disk answering as
# the in-memory merge, and clear errors for missing or malformed
# calibration data. $1 = the mergescope binary.
set -u
ms="$1"
demo="${MS_SOURCE_DIR:?MS_SOURCE_DIR not set}/demo"
tmp=$(mktemp -d /tmp/ms-test-calib-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"
export MERGESCOPE_CACHE_DIR="$tmp/cache"

recipe() { # recipe FILE METHOD PARAMS [CALIBRATION]
    cat >"$1" <<JSON
{ "format": "mergescope-recipe/1", "base": "$demo/quick",
  "models": [ { "name": "long", "path": "$demo/long", "weight": 1.0 } ],
  "method": "$2", "params": $3,
  "output": { "dtype": "bf16", "config_from": "long", "tokenizer_from": "long" }${4:+,
  \"calibration\": $4} }
JSON
}
cal="{ \"file\": \"$demo/calib.jsonl\", \"samples\": 16 }"
recipe "$tmp/aim.json" aim '{ "density": 0.4, "omega": 0.4 }' "$cal"
recipe "$tmp/sens.json" sens '{ "lambda": 0.5, "alpha": 4 }' "$cal"

check "calibrate --dry-run prints the cost and runs nothing" \
    run 0 "$ms" calibrate "$tmp/aim.json" --dry-run --format json
check "... 16 samples, one forward pass each" out_has '"samples": 16,'
check "... and the forward pass count" out_has '"forward_passes": 1,'
check "... with no calibration time reported" bash -c '! grep -q seconds "$tmp/out"'

check "calibrate aim prints per-layer importance" run 0 "$ms" calibrate "$tmp/aim.json"
check "... for every linear input of layer 0" out_match '^0  *attn_in  *0\.[0-9]'
check "... and the lm_head input" out_match '^head  *head_in'
check "... after the cost estimate" err_has "calibration: 16 samples"

check "calibrate sens prints per-layer sensitivity and coefficients" run 0 "$ms" calibrate "$tmp/sens.json" --format json
check "... one coefficient per layer, around 1" \
    bash -c 'python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=[l[\"coefficient\"][0] for l in d[\"layers\"]]; assert len(c)==6 and abs(sum(c)/6-1)<1e-5 and max(c)>min(c), c" "$tmp/out"'

for m in aim sens; do
    check "$m: merge runs calibration and writes the model" run 0 "$ms" merge "$tmp/$m.json" -o "$tmp/$m-1" --threads 2
    check "$m: ... saying what calibration costs" err_has "calibration: 16 samples"
    check "$m: merging again on 1 thread gives the same bytes" \
        bash -c '"$1" merge "$2" -o "$3" --threads 1 2>/dev/null && cmp -s "$3/model.safetensors" "$4/model.safetensors"' \
        _ "$ms" "$tmp/$m.json" "$tmp/$m-2" "$tmp/$m-1"
    check "$m: the saved recipe keeps the calibration section, its path leading from there to the file" \
        bash -c 'f=$(sed -n "s/.*\"file\": \"\\(.*\\)\".*/\\1/p" "$1/mergescope-recipe.json"); case "$f" in /*) ;; *) f="$1/$f";; esac; [ "$(realpath "$f")" = "$(realpath "$2/calib.jsonl")" ]' \
        _ "$tmp/$m-1" "$demo"
    check "$m: the saved recipe merges to the same bytes" \
        bash -c '"$1" merge "$2/mergescope-recipe.json" -o "$3" 2>/dev/null && cmp -s "$3/model.safetensors" "$2/model.safetensors"' \
        _ "$ms" "$tmp/$m-1" "$tmp/$m-3"
done
check "aim differs from plain TIES with the same density" \
    bash -c 'recipe() { :; }; "$1" merge "$2" -o "$3" 2>/dev/null; ! cmp -s "$3/model.safetensors" "$4/model.safetensors"' \
    _ "$ms" "$demo/l2s-ties.json" "$tmp/ties" "$tmp/aim-1"
check "the merged aim model answers as the in-memory merge" \
    bash -c 'a=$("$1" generate "$2" -p "Compute 12+34." -n 60 2>/dev/null); b=$("$1" generate "$3" -p "Compute 12+34." -n 60 2>/dev/null); [ -n "$a" ] && [ "$a" = "$b" ]' \
    _ "$ms" "$tmp/aim.json" "$tmp/aim-1"

check "the first merges left one cached result per method" \
    bash -c '[ $(ls "$1"/aim-*.bin | wc -l) = 1 ] && [ $(ls "$1"/sens-*.bin | wc -l) = 1 ]' _ "$tmp/cache"
check "a rerun reads calibration from the cache" run 0 "$ms" merge "$tmp/sens.json" -o "$tmp/sens-4"
check "... says so" err_has "calibration results read from the cache"
check "... and gives the same bytes" cmp -s "$tmp/sens-4/model.safetensors" "$tmp/sens-1/model.safetensors"
for f in "$tmp"/cache/sens-*.bin; do printf 'garbage' | dd of="$f" bs=1 seek=40 conv=notrunc 2>/dev/null; done
check "a damaged cache entry is recomputed" run 0 "$ms" merge "$tmp/sens.json" -o "$tmp/sens-5"
check "... (it says what calibration took)" err_has "calibration took"
check "... and gives the same bytes" cmp -s "$tmp/sens-5/model.safetensors" "$tmp/sens-1/model.safetensors"
check "a changed calibration setting is a different entry" \
    bash -c 'sed "s/\"samples\": 16/\"samples\": 8/" "$1" >"$2" && "$3" calibrate "$2" >/dev/null 2>&1 && [ $(ls "$4"/sens-*.bin | wc -l) = 2 ]' \
    _ "$tmp/sens.json" "$tmp/sens8.json" "$ms" "$tmp/cache"
cp "$demo/calib.jsonl" "$tmp/copy.jsonl"
sed "s#$demo/calib.jsonl#$tmp/copy.jsonl#" "$tmp/sens.json" >"$tmp/sens-copy.json"
check "the same calibration data under another name reads the cached results" run 0 "$ms" calibrate "$tmp/sens-copy.json"
check "... (says so)" err_has "calibration results read from the cache"
cp -r "$demo/quick" "$tmp/quick2"
sed "s#\"$demo/quick\"#\"$tmp/quick2\"#" "$tmp/aim.json" >"$tmp/aim-q2.json"
check "a copied base model: calibration computed once" run 0 "$ms" calibrate "$tmp/aim-q2.json"
check "... and read back the second time" bash -c '"$1" calibrate "$2" 2>&1 >/dev/null | grep -q "read from the cache"' _ "$ms" "$tmp/aim-q2.json"
sed -i 's/"rms_norm_eps": [0-9.e-]*/"rms_norm_eps": 0.5/' "$tmp/quick2/config.json"
check "a changed config.json is measured again, not read from the cache" \
    bash -c '"$1" calibrate "$2" 2>&1 >/dev/null | grep -q "calibration took"' _ "$ms" "$tmp/aim-q2.json"

cat >"$tmp/two.json" <<JSON
{ "format": "mergescope-recipe/1", "base": "$demo/quick",
  "models": [ { "name": "long", "path": "$demo/long" }, { "name": "long \\"again\\"", "path": "$demo/long" } ],
  "method": "sens", "params": { "lambda": 0.5 },
  "calibration": { "file": "$demo/calib.jsonl", "samples": 4 } }
JSON
check "sens with two models: one line per model with loss and alignment" run 0 "$ms" calibrate "$tmp/two.json"
check "... (table)" out_match '^model long  *response loss [0-9.]*  alignment [0-9.]*$'
check "... and valid JSON whatever the model names" \
    bash -c '"$1" calibrate "$2" --format json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); assert len(d[\"alignment\"])==2, d"' _ "$ms" "$tmp/two.json"

check "MERGESCOPE_CACHE_DIR=off stores nothing" \
    bash -c 'MERGESCOPE_CACHE_DIR=off "$1" calibrate "$2" >/dev/null 2>&1 && [ ! -e "$3" ]' _ "$ms" "$tmp/aim.json" "$tmp/nocache-dir-unused"

recipe "$tmp/nocal.json" aim '{ "omega": 0.4 }'
check "aim without a calibration section: exit 3" run 3 "$ms" merge "$tmp/nocal.json" -o "$tmp/x"
check "... saying what to add" err_has 'needs calibration data: add "calibration": {"file"'
check "... and leaving nothing behind" test ! -e "$tmp/x"

printf '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n' >"$tmp/bad.jsonl"
recipe "$tmp/badcal.json" sens '{ "lambda": 0.5 }' "{ \"file\": \"$tmp/bad.jsonl\" }"
check "a malformed calibration file: exit 3" run 3 "$ms" calibrate "$tmp/badcal.json"
check "... naming the file and line" err_has "bad.jsonl:2: \"response\" is missing"

recipe "$tmp/nofile.json" aim '{ "omega": 0.4 }' "{ \"file\": \"$tmp/none.jsonl\" }"
check "a missing calibration file: exit 3, naming it" run 3 "$ms" calibrate "$tmp/nofile.json"
check "... naming it" err_has "$tmp/none.jsonl"

recipe "$tmp/badkey.json" aim '{ "omega": 0.4 }' "{ \"file\": \"x\", \"samples\": -1 }"
check "a negative sample count is a recipe error naming the key" run 3 "$ms" calibrate "$tmp/badkey.json"
check "... calibration.samples" err_has "calibration.samples"

check "calibrate on a method without calibration: usage-level error" run 2 "$ms" calibrate "$demo/l2s-ties.json"
check "... saying which methods need it" err_has "aim and sens do"

check "export refuses aim (mergekit has no such method)" run 3 "$ms" export "$tmp/aim.json" --to mergekit
check "... saying so" err_has "aim"
report

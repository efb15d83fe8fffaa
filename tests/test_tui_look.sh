#!/usr/bin/env bash
# How the workbench looks, in a private tmux server: colours as escape
# codes (capture-pane -e) for the heat bars in the default theme, other
# colours in the light theme, none under NO_COLOR or --theme mono; the
# preview prompt taking keys only when asked; the essentials at 80x24;
# the chart screen, live while tuning. $1 = the mergescope binary;
# MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
command -v tmux >/dev/null || { echo "tmux is not installed (scripts/install-deps installs it)"; exit 1; }
tmp=$(mktemp -d /tmp/ms-test-look-XXXXXX)
sock="mslook-$$"
T() { tmux -L "$sock" "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
. "$MS_SOURCE_DIR/tests/testlib.sh"
"$mk" "$tmp/m" 5 >/dev/null || { echo "cannot make fixtures"; exit 1; }
export HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config" XDG_STATE_HOME="$tmp/home/state"
mkdir -p "$HOME"
cd "$tmp/m"

screen() { T capture-pane -p -t "${1:-tui}"; }
screen_e() { T capture-pane -e -p -t "${1:-tui}"; }
wait_for() { # wait_for TEXT [SECONDS]
    local i=0
    while [ "$i" -lt $(( ${2:-20} * 10 )) ]; do
        screen | grep -qF -- "$1" && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "      screen lacks '$1':"; screen | sed 's/^/      | /'; return 1
}
# open NAME W H ENV ARGS...: a workbench on the fixtures, statistics done.
open() {
    local name="$1" w="$2" h="$3" env="$4"; shift 4
    T kill-session -t "$name" 2>/dev/null
    T new-session -d -s "$name" -x "$w" -y "$h" "env TERM=xterm-256color $env '$ms' $* 2>'$tmp/$name.err'; sleep 60"
    local i=0
    while [ $i -lt 200 ]; do screen "$name" | grep -q 'stats 39/39' && return 0; sleep 0.1; i=$((i + 1)); done
    echo "      $name did not finish its statistics:"; screen "$name" | sed 's/^/      | /'; return 1
}
# heat_codes NAME: the 256-colour foregrounds used on the table's rows.
heat_codes() { screen_e "$1" | grep -a 'layer [0-9]' | grep -aoE '\[38;5;[0-9]+m' | sort -u | tr -d '[m' | tr '\n' ' '; }

open def 120 32 "" --base base --model long --threads 2
check "default theme: the heat bars are drawn in the theme's 256 colours (71, 214, 196)" \
    bash -c "codes='$(heat_codes def)'; echo \"      codes: \$codes\"; echo \"\$codes\" | grep -qE '38;5;(71|214|196)'"
open light 120 32 "" --base base --model long --threads 2 --theme light
check "light theme: other heat colours (28, 130, 160) and none of the dark ones" \
    bash -c "codes='$(heat_codes light)'; echo \"      codes: \$codes\"; echo \"\$codes\" | grep -qE '38;5;(28|130|160)' && ! echo \"\$codes\" | grep -qE '38;5;(71|214|196)'"
open hc 120 32 "" --base base --model long --threads 2 --theme high-contrast
check "high-contrast theme: colour codes on the rows too" \
    bash -c "screen_e() { tmux -L $sock capture-pane -e -p -t hc; }; screen_e | grep -a 'layer [0-9]' | grep -aqE '\[(9[0-7]|3[0-7]|38;5;[0-9]+)m'"
open nocolor 120 32 "NO_COLOR=1" --base base --model long --threads 2
check "NO_COLOR=1: no colour codes anywhere, attributes only" \
    bash -c "out=\$(tmux -L $sock capture-pane -e -p -t nocolor); ! echo \"\$out\" | grep -aqE '\[(3[0-7]|4[0-7]|9[0-7]|10[0-7]|38;5;[0-9]+|48;5;[0-9]+)m' && echo \"\$out\" | grep -aqE '\[(1|7)m'"
open mono 120 32 "" --base base --model long --threads 2 --theme mono
check "--theme mono: no colour codes either" \
    bash -c "! tmux -L $sock capture-pane -e -p -t mono | grep -aqE '\[(3[0-7]|4[0-7]|38;5;[0-9]+)m'"
open eight 120 32 "TERM=xterm" --base base --model long --threads 2
check "8-colour terminal (TERM=xterm): the heat bars in basic colours, no 256-colour codes" \
    bash -c "rows=\$(tmux -L $sock capture-pane -e -p -t eight | grep -a 'layer [0-9]'); echo \"\$rows\" | grep -aqE '\[(3[1-7]|9[1-7])m' && ! echo \"\$rows\" | grep -aqE '38;5;[0-9]+m'"
T kill-session -t light; T kill-session -t hc; T kill-session -t nocolor; T kill-session -t mono; T kill-session -t eight

# The essentials at 80x24: bars, whole column titles, the legend, F10.
open tui 80 24 "" --base base --model quick --model long --threads 2
check "80x24: the header names the models with their folders" wait_for "base base | quick quick | long long"
check "80x24: every column title is whole (conflict abbreviated on purpose)" \
    bash -c "screen() { tmux -L $sock capture-pane -p -t tui; }; screen | grep -E '^ layer +norm +rel +cos +confl +norm +rel +cos +confl +weight'"
check "80x24: the heat bars are drawn" \
    bash -c "tmux -L $sock capture-pane -p -t tui | grep 'layer 1' | grep -q '[█▏▎▍▌▋▊▉]'"
check "80x24: a legend line explains the columns" wait_for "cos cosine"
check "80x24: the function bar keeps F10 Quit, labels apart" \
    bash -c "tmux -L $sock capture-pane -p -t tui | tail -1 | grep -q 'F1Help F2Recipe F3Search F4Preview F5Detail F6SortBy F7Dec F8Inc F9Log F10Quit'"
T send-keys -t tui /
T send-keys -t tui -l "nothing"
T send-keys -t tui Enter
check "a search without a match says so" wait_for 'no row matches "nothing"'
T send-keys -t tui /
T send-keys -t tui -l "lm_head"
T send-keys -t tui Enter
check "... and a later match replaces the message" bash -c "
    for i in \$(seq 1 30); do s=\$(tmux -L $sock capture-pane -p -t tui); echo \"\$s\" | grep -q '\"lm_head\": lm_head' && ! echo \"\$s\" | grep -q 'no row matches' && exit 0; sleep 0.1; done; exit 1"

# Keys are commands until asked: c before e toggles compare, e opens the prompt.
T send-keys -t tui F4
check "Preview: the hint says which keys do what" wait_for "e or Enter types a prompt, c starts compare"
T send-keys -t tui c
check "... c is a command, not text" wait_for "compare mode on"
T send-keys -t tui e
check "... e gives the prompt the keys" wait_for "Typing the prompt: Enter runs it, Esc leaves the prompt"
T send-keys -t tui -l "ab qc"
check "... the typed text shows on the prompt line, q and c included" wait_for "prompt> ab qc"
T send-keys -t tui Enter
check "... Enter runs it and hands the keys back" wait_for "e or Enter types a prompt"
check "... the prompt line keeps the prompt" wait_for "prompt> ab qc"
T send-keys -t tui e Escape
check "... Esc leaves the prompt without leaving the screen" wait_for "e or Enter types a prompt"
T send-keys -t tui q
check "... and q, a command again, goes back to the Layers screen" wait_for "F5Detail"

# The chart: braille lines, the selected layer marked, live while tuning.
T send-keys -t tui /
T send-keys -t tui -l "1"
T send-keys -t tui Enter C
check "C opens the chart of one statistic across layers" wait_for "Chart: norm of quick"
check "... drawn with braille characters (U+2800-28FF)" \
    bash -c "tmux -L $sock capture-pane -p -t tui | LC_ALL=C grep -aqE \$'\\xe2[\\xa0-\\xa3]'"
check "... the legend reads the selected layer" wait_for "layer 1:"
T send-keys -t tui Right
check "... Right selects the next layer" wait_for "layer 2:"
for i in 1 2 3 4 5 6 7; do T send-keys -t tui ']'; screen | grep -q 'Chart: merged_rel' && break; sleep 0.2; done
check "] switches the statistic" wait_for "Chart: merged_rel"
before=$(screen | grep -o 'layer 2:.*')
T send-keys -t tui + +
check "+ tunes the selected layer and the chart follows" bash -c "
    for i in \$(seq 1 100); do now=\$(tmux -L $sock capture-pane -p -t tui | grep -o 'layer 2:.*'); [ -n \"\$now\" ] && [ \"\$now\" != '$before' ] && exit 0; sleep 0.1; done
    echo \"      before: $before\"; echo \"      after:  \$now\"; exit 1"
T send-keys -t tui P
check "P draws one line per projection" wait_for "q_proj"

report

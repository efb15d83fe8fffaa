#!/usr/bin/env bash
# The include rules of the README's layout section, checked on the sources:
# every `#include "x.h"` of a file resolves to a header in the file's own
# folder or in a folder its layer may include, and the library folders never
# call exit, printf or curses. $1 (the built binary) is not used.
set -uo pipefail
src="${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$src/tests/testlib.sh"
cd "$src" || exit 1

# folder -> the folders it may include besides itself
declare -A allowed=(
    [common]=""
    [io]="common"
    [core/merge]="io common"
    [core/engine]="io common"
    [core/workbench]="core/merge core/engine io common"
    [tui]="core/workbench io common"
    [app]="tui core/workbench core/merge core/engine io common"
)

# header name -> its folder (header names are unique across the tree)
declare -A home=()
dups=""
for dir in "${!allowed[@]}"; do
    for h in "$dir"/*.h; do
        [ -e "$h" ] || continue
        b=$(basename "$h")
        [ -n "${home[$b]:-}" ] && dups="$dups $b"
        home[$b]=$dir
    done
done
check "header names are unique across the library folders" same "$dups" ""

# Lists "file: header (folder)" for every include its layer may not use.
violations() {
    local dir="$1" f inc h to ok a
    for f in "$dir"/*.[ch]; do
        [ -e "$f" ] || continue
        while IFS= read -r inc; do
            h=${inc#*\"}; h=${h%\"*}
            to=${home[$h]:-}
            [ -z "$to" ] && continue   # a header of tests/ or of the system
            ok=0
            [ "$to" = "$dir" ] && ok=1
            for a in ${allowed[$dir]}; do [ "$to" = "$a" ] && ok=1; done
            [ $ok -eq 1 ] || echo "$f: $h ($to)"
        done < <(grep -h '^#include "' "$f")
    done
}

for dir in common io core/merge core/engine core/workbench tui app; do
    v=$(violations "$dir")
    check "$dir/ includes only ${allowed[$dir]:-the C library}${allowed[$dir]:+ and itself}" same "$v" ""
done

# A planted violation must be caught, or the checks above prove nothing.
mkdir -p "$tmp/probe/tui"
printf '#include "model.h"\n#include "workspace.h"\n' > "$tmp/probe/tui/probe.c"
probe=$(cd "$tmp/probe" && for f in tui/*.c; do grep -h '^#include "' "$f" | while IFS= read -r inc; do
            h=${inc#*\"}; h=${h%\"*}; echo "$h ${home[$h]:-}"; done; done)
check "the check sees a tui/ file including core/engine's model.h" same "$probe" "model.h core/engine
workspace.h core/workbench"

# Library code reports through lm_err and leaves the process to app/ (only
# lm_abort, behind LM_ASSERT, stops it: a broken invariant, never bad input).
lib="common io core/merge core/engine core/workbench"
calls=$(grep -nE '(^|[^_a-z])(exit|printf|puts|abort)\(|initscr|endwin' \
            $(for d in $lib; do ls "$d"/*.c; done) | grep -vE '^\S+:[0-9]+:\s*(/?\*|//)' |
        grep -v '^common/lm_error.c:.*abort();' || true)
check "library code calls no exit, printf, abort or curses" same "$calls" ""

# One error convention: a function that reports errors with lm_err returns
# its LM_E* code, never a bare -1 beside it (a -1 that means "none" in a
# lookup is fine), and nothing in the library returns a negated exit status.
mixed=$(for d in $lib; do for f in "$d"/*.c; do
            awk -v file="$f" '
                /^[A-Za-z].*\(/ { head = $0 }
                /^\{/ { body = ""; inside = 1; next }
                inside { body = body "\n" $0 }
                /^\}/ && inside {
                    if (body ~ /lm_err/ && body ~ /return -1;/) print file ": " head
                    inside = 0
                }' "$f"
        done; done)
check "no library function mixes lm_err with a bare 'return -1'" same "$mixed" ""
negated=$(grep -nE 'return -(cli_|EXIT_|exit)|return -[2-9];' \
              $(for d in $lib; do ls "$d"/*.c; done) || true)
check "library code returns no negated exit status" same "$negated" ""

report

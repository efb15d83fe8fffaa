# Shared by the shell tests: one line per check, a closing tally that CTest
# and CI read, and helpers that keep a command's output for the checks.
# Source it after setting `tmp` to a scratch directory.
n=0 failed=0

check() { # check DESCRIPTION COMMAND...
    local descr="$1"; shift
    n=$((n + 1))
    if "$@"; then
        echo "$n - $descr: PASSED"
    else
        echo "$n - $descr: FAILED"
        failed=$((failed + 1))
    fi
}

# Prints the tally and returns non-zero when any check failed.
report() {
    echo "$((n - failed)) passed, $failed failed"
    [ "$failed" -eq 0 ]
}

same() { # same ACTUAL EXPECTED
    [ "$1" = "$2" ] || { printf '      got:      %s\n      expected: %s\n' "$1" "$2"; return 1; }
}

# run EXPECTED_STATUS CMD... ; keeps stdout in $tmp/out and stderr in $tmp/err
run() {
    local want="$1"; shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    if [ "$got" != "$want" ]; then
        echo "      exit status $got, expected $want; stderr:"; sed 's/^/      /' "$tmp/err"
        return 1
    fi
}
err_has() { grep -qF -- "$1" "$tmp/err" || { echo "      stderr lacks '$1':"; sed 's/^/      /' "$tmp/err"; return 1; }; }
out_has() { grep -qF -- "$1" "$tmp/out" || { echo "      stdout lacks '$1':"; head -8 "$tmp/out" | sed 's/^/      /'; return 1; }; }
out_match() { grep -q -- "$1" "$tmp/out" || { echo "      stdout does not match '$1':"; head -8 "$tmp/out" | sed 's/^/      /'; return 1; }; }
out_is() { # the whole of stdout
    local want="$1"
    [ "$(cat "$tmp/out")" = "$want" ] || { echo "      stdout:"; sed 's/^/      /' "$tmp/out"; echo "      expected:"; echo "$want" | sed 's/^/      /'; return 1; }
}
export tmp
export -f run err_has out_has out_match out_is same

#!/usr/bin/env bash
# Nothing a user has is destroyed, and no recipe mistake passes in silence:
# each case runs the command with the exact exit status expected and
# compares checksums of every input and pre-existing file before and after.
# $1 = the mergescope binary; MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
tmp=$(mktemp -d /tmp/ms-test-safety-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/testlib.sh"

"$mk" "$tmp/m" 3 || { echo "cannot make fixtures"; exit 1; }
printf '{"prompt": "1+1", "response": "2"}\n' > "$tmp/m/calib.jsonl"
recipe() { # recipe FILE [OVERRIDES_JSON]
    cat >"$1" <<JSON
{
  "format": "mergescope-recipe/1",
  "base": "quick",
  "models": [ { "name": "long", "path": "long", "weight": 0.7 } ],
  "method": "ties",
  "params": { "density": 0.4 },
  "overrides": [ ${2:-} ],
  "calibration": { "file": "calib.jsonl" }
}
JSON
}
recipe "$tmp/m/r.json"
recipe "$tmp/m/bad-layers.json" '{ "layers": "0-99", "params": { "weight": { "long": 0.3 } } }'
recipe "$tmp/m/bad-module.json" '{ "modules": "self_atn", "params": { "weight": { "long": 0.3 } } }'
sums() { find "$@" -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum; }
before=$(sums "$tmp/m")
unchanged() { same "$(sums "$tmp/m")" "$before"; }

check "merge -o an input model directory: exit 3 naming both, inputs unchanged" \
    bash -c "run 3 '$ms' merge '$tmp/m/r.json' -o '$tmp/m/long' && err_has 'refusing to write' && err_has '$tmp/m/long'"
check "  (checksums of every input file)" unchanged
check "merge -o a directory inside an input: exit 3" \
    bash -c "run 3 '$ms' merge '$tmp/m/r.json' -o '$tmp/m/quick/out' && err_has 'lies inside the input'"
check "merge -o the folder holding the inputs: exit 3" \
    bash -c "run 3 '$ms' merge '$tmp/m/r.json' -o '$tmp/m' && err_has 'contains the input'"
check "merge -o the calibration file: exit 3" \
    bash -c "run 3 '$ms' merge '$tmp/m/r.json' -o '$tmp/m/calib.jsonl' && err_has 'is the input'"
check "  (checksums of every input file)" unchanged

mkdir -p "$tmp/mine"
echo "my notes" > "$tmp/mine/README.md"
mine=$(sums "$tmp/mine")
check "merge -o a non-empty directory mergescope did not make: exit 3, suggests --force" \
    bash -c "run 3 '$ms' merge '$tmp/m/r.json' -o '$tmp/mine' && err_has '--force'"
check "  (the user's README.md is untouched)" same "$(sums "$tmp/mine")" "$mine"
check "with --force it writes" bash -c "run 0 '$ms' merge '$tmp/m/r.json' -o '$tmp/mine' --force"

check "merge into a new directory" bash -c "run 0 '$ms' merge '$tmp/m/r.json' -o '$tmp/merged'"
first=$(sha256sum < "$tmp/merged/model.safetensors")
check "rerunning into its own previous output works, same bytes" \
    bash -c "run 0 '$ms' merge '$tmp/m/r.json' -o '$tmp/merged' && [ \"\$(sha256sum < '$tmp/merged/model.safetensors')\" = '$first' ]"
check "the model card names no local path" bash -c "! grep -q '$tmp' '$tmp/merged/README.md'"
check "the saved recipe names its models relative to the output" \
    bash -c "grep -q '\"../m/quick\"' '$tmp/merged/mergescope-recipe.json' && grep -q '\"../m/calib.jsonl\"' '$tmp/merged/mergescope-recipe.json'"
check "the saved recipe reruns from where it is, same bytes" \
    bash -c "cd / && run 0 '$ms' merge '$tmp/merged/mergescope-recipe.json' -o '$tmp/again' && [ \"\$(sha256sum < '$tmp/again/model.safetensors')\" = '$first' ]"

# A writer killed mid-merge leaves OUT.partial-PID; the next write removes it.
sh -c 'exit 0' & dead=$!
wait $dead
mkdir -p "$tmp/merged.partial-$dead" && echo x > "$tmp/merged.partial-$dead/model.safetensors"
check "a dead writer's staging directory is removed by the next write" \
    bash -c "run 0 '$ms' merge '$tmp/m/r.json' -o '$tmp/merged' && [ ! -e '$tmp/merged.partial-$dead' ]"

check "logits -o inside the model directory: exit 3" \
    bash -c "run 3 '$ms' logits '$tmp/m/long' --ids 1,2 -o '$tmp/m/long/l.f32' && err_has 'lies inside the input'"
check "  (checksums of every input file)" unchanged

check "an override beyond the model's layers: exit 3 naming it" \
    bash -c "run 3 '$ms' merge '$tmp/m/bad-layers.json' -o '$tmp/o2' && err_has 'overrides[0].layers: 0-99 reaches beyond the model' && [ ! -e '$tmp/o2' ]"
check "a module filter that matches nothing: exit 3 naming it" \
    bash -c "run 3 '$ms' merge '$tmp/m/bad-module.json' -o '$tmp/o2' && err_has 'overrides[0].modules: \"self_atn\" matches no tensor'"
sed 's/"density": 0.4/"density": 0.4, "lambda": 1e300/' "$tmp/m/r.json" > "$tmp/overflow.json"
sed -i "s#\"quick\"#\"$tmp/m/quick\"#; s#\"long\", \"path\": \"long\"#\"long\", \"path\": \"$tmp/m/long\"#; s#calib.jsonl#$tmp/m/calib.jsonl#" "$tmp/overflow.json"
check "a merge that makes NaN/Inf from finite weights is refused: exit 3 naming a tensor, nothing written" \
    bash -c "run 3 '$ms' merge '$tmp/overflow.json' -o '$tmp/o3' && err_has 'not finite' && err_has 'tensor ' && [ ! -e '$tmp/o3' ]"
check "the same mistakes in stats: exit 3" bash -c "run 3 '$ms' stats '$tmp/m/bad-module.json'"
check "  (checksums of every input file)" unchanged

report

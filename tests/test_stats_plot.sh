#!/usr/bin/env bash
# mergescope stats --plot: the SVG parses as XML, has one panel per
# statistic and one polyline per module (and model or pair) in each, with a
# point per layer; it is written through the output policy (never over an
# input model, an old file replaced whole). $1 = the mergescope binary;
# MS_MKFIXTURE = the fixture writer.
set -u
ms="$1"
mk="${MS_MKFIXTURE:?MS_MKFIXTURE not set}"
py=/usr/bin/python3
[ -x "$py" ] || { echo "python3 is needed to parse the SVG"; exit 1; }
tmp=$(mktemp -d /tmp/ms-test-plot-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$MS_SOURCE_DIR/tests/testlib.sh"
"$mk" "$tmp/m" 5 >/dev/null || { echo "cannot make fixtures"; exit 1; }
m="$tmp/m"

# svg_shape FILE: "stat:N:P" per panel (N polylines, P = points of each,
# "x" when they differ), names of the series after a '|'.
svg_shape() {
    "$py" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
out = []
for g in root.findall("s:g[@class='panel']", ns):
    lines = g.findall("s:polyline", ns)
    pts = {len(l.get("points").split()) for l in lines}
    names = ",".join(l.get("data-series").replace(" ", "_") for l in lines)
    out.append("%s:%d:%s|%s" % (g.get("data-stat"), len(lines), pts.pop() if len(pts) == 1 else "x", names))
print(" ".join(out))
PY
}

check "one model: --plot writes the SVG and says so" \
    bash -c "run 0 '$ms' stats --density 0.5 --base '$m/base' --model '$m/long' --plot '$tmp/one.svg' --threads 1 && err_has 'wrote $tmp/one.svg (5 panels over 3 layers)'"
check "... nothing goes to stdout" bash -c "[ ! -s '$tmp/out' ]"
check "... it parses as XML, one panel per statistic, one polyline per module, a point per layer" \
    same "$(svg_shape "$tmp/one.svg")" \
    "norm:2:3|attention,mlp rel:2:3|attention,mlp topk:2:3|attention,mlp sign_flip:2:3|attention,mlp merged_rel:2:3|attention,mlp"
check "... the legend names every line" \
    bash -c "[ \$(grep -c 'class=\"legend\">attention<' '$tmp/one.svg') = 5 ] && [ \$(grep -c 'class=\"legend\">mlp<' '$tmp/one.svg') = 5 ]"
check "... and it has axes with tick labels for each layer" \
    bash -c "grep -q '>layer</text>' '$tmp/one.svg' && grep -q 'class=\"tick\">2</text>' '$tmp/one.svg'"

check "two models: per-model panels have a line per module and model, pair panels per module" \
    bash -c "run 0 '$ms' stats --density 0.5 --base '$m/base' --model '$m/quick' --model '$m/long' --plot '$tmp/two.svg' --threads 1"
check "... eight panels with the right polylines" same "$(svg_shape "$tmp/two.svg" | sed 's/|[^ ]*//g')" \
    "norm:4:3 rel:4:3 topk:4:3 cos:2:3 conflict:2:3 ties_conflict:2:3 sign_flip:2:3 merged_rel:2:3"
check "... a pair panel names the pair" grep -q '>cos (quick x long)</text>' "$tmp/two.svg"

check "--plot-by projection: a line per projection in the forward pass's order" \
    bash -c "run 0 '$ms' stats --density 0.5 --base '$m/base' --model '$m/long' --plot '$tmp/proj.svg' --plot-by projection --threads 1"
check "... q_proj first, down_proj last" bash -c "
    '$py' -c \"import sys,xml.etree.ElementTree as E; r=E.parse('$tmp/proj.svg').getroot(); ns={'s':'http://www.w3.org/2000/svg'}; g=r.find('s:g', ns); print(','.join(l.get('data-series') for l in g.findall('s:polyline', ns)))\" >'$tmp/names'
    same \"\$(cat '$tmp/names')\" 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj'"

# The output policy: an input is refused before any work, a file replaced.
check "--plot into an input model directory is refused with exit 3" \
    bash -c "run 3 '$ms' stats --density 0.5 --base '$m/base' --model '$m/long' --plot '$m/long/x.svg' && err_has 'lies inside the input'"
check "... and writes nothing there" bash -c "[ ! -e '$m/long/x.svg' ]"
echo "old" > "$tmp/old.svg"
check "an existing file is replaced whole" \
    bash -c "run 0 '$ms' stats --density 0.5 --base '$m/base' --model '$m/long' --plot '$tmp/old.svg' && head -1 '$tmp/old.svg' | grep -q '<?xml' && ! grep -q '^old' '$tmp/old.svg'"
check "... leaving no temporary file beside it" bash -c "[ \$(ls '$tmp' | grep -c old) = 1 ]"
check "--plot-by takes module or projection only" \
    bash -c "run 2 '$ms' stats --density 0.5 --base '$m/base' --model '$m/long' --plot '$tmp/z.svg' --plot-by layer"
check "stats --help documents --plot" bash -c "run 0 '$ms' stats --help && out_has '--plot FILE.svg' && out_has '--plot-by'"
report

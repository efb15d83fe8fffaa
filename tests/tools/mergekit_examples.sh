#!/usr/bin/env bash
# Writes tests/fixtures/mergekit/: mergekit's documented example
# configurations (arcee-ai/mergekit examples/*.yml, its README's parameter
# and tokenizer sections, and the forms its docs describe), adapted to the
# shell tests' fixture trio made by ms_mkfixture: model references become
# `base`, `quick` and `long`, layer ranges [0, 3] (the trio has 3 layers).
# accept-*.yml must import; reject-*.yml must fail with the message on their
# first line ("# expect: TEXT"), since each uses something mergescope does
# not support (yet). Rerun after editing; the test reads the written files.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/fixtures/mergekit"
mkdir -p "$out"
rm -f "$out"/*.yml

# examples/linear.yml: three models, absolute weights, float16.
cat >"$out/accept-linear.yml" <<'YAML'
models:
  - model: quick
    parameters:
      weight: 1.0
  - model: base
    parameters:
      weight: 0.3
  - model: long
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
YAML

# examples/mega.yml, first stage: gradient slerp over one slice of every
# layer, t filtered by module with a fallback (out_path is mergekit-mega's).
cat >"$out/accept-slerp-slices.yml" <<'YAML'
slices:
  - sources:
      - model: quick
        layer_range: [0, 3]
      - model: long
        layer_range: [0, 3]
merge_method: slerp
base_model: quick
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - filter: mlp
      value: [1, 0.5, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
YAML

# examples/mega.yml, second stage: TIES with a density gradient, a weight
# filtered by module, normalize and int8_mask. The density gradient ends
# at 0.3 instead of 0.1: int(0.1 x 8) keeps no entry of the trio's 8-entry
# norms, where mergekit and mergescope both stop.
cat >"$out/accept-ties-filters.yml" <<'YAML'
models:
  - model: quick
    parameters:
      density: [1, 0.7, 0.3] # density gradient
      weight: 1.0
  - model: long
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
YAML

# The common DARE-TIES form: the base model listed among the models
# without parameters, int8_mask, bfloat16.
cat >"$out/accept-dare-ties.yml" <<'YAML'
models:
  - model: base
    # No parameters necessary for base model
  - model: quick
    parameters:
      density: 0.53
      weight: 0.4
  - model: long
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: base
parameters:
  int8_mask: true
dtype: bfloat16
YAML

# The README's parameter forms: global scalars and a filtered global
# setting beneath per-model ones, tokenizer_source from the base.
cat >"$out/accept-task-arithmetic.yml" <<'YAML'
merge_method: task_arithmetic
base_model: base
models:
  - model: quick
    parameters:
      weight: 0.3
  - model: long
parameters:
  weight:
    - filter: mlp
      value: 0.8
    - value: 0.6
  lambda: 0.9
tokenizer_source: base
dtype: float32
out_dtype: bfloat16
YAML

# examples/ties.yml names a method mergekit no longer has.
cat >"$out/reject-ranked-ties.yml" <<'YAML'
# expect: merge_method: 'ranked_ties' is not a method mergescope has
models:
  - model: quick # Best
    parameters:
      density: [0.8, 0.3, 0.1]
      weight: [1.0, 0.8, 0.5]
  - model: long #Middle
    parameters:
      density: [0.1, 0.4, 0.1]
      weight: [0.2, 0.8, 0.1]
merge_method: ranked_ties
base_model: base
parameters:
dtype: bfloat16
YAML

# examples/gradient-slerp.yml writes `pattern`, which mergekit's
# ConditionalParameter does not define (it would ignore it silently).
cat >"$out/reject-gradient-slerp-pattern.yml" <<'YAML'
# expect: parameters.t[0].pattern: unknown key
slices:
  - sources:
      - model: quick
        layer_range: [0, 3]
      - model: long
        layer_range: [0, 3]
merge_method: slerp
base_model: quick
parameters:
  t:
    - pattern: self_attn
      value: [0, 0.5, 1]
    - pattern: mlp
      value: [1, 0.5, 0]
    - value: 0.5
dtype: float16
YAML

# examples/orcamini-platy-44layer.yml: layer stacking (passthrough), on the
# fixture's 3-layer models.
cat >"$out/accept-passthrough-stack.yml" <<'YAML'
slices:
  - sources:
    - model: quick
      layer_range: [0, 2]
  - sources:
    - model: long
      layer_range: [1, 3]
merge_method: passthrough
dtype: float16
YAML

# examples/linear_small.yml carries a key of another tool.
cat >"$out/reject-linear-small.yml" <<'YAML'
# expect: metric_method: unknown key
models:
  - model: quick

  - model: long

metric_method: scale
dtype: float32
YAML

# examples/mega.yml as a whole: two documents, for mergekit-mega.
cat >"$out/reject-mega.yml" <<'YAML'
# expect: a second YAML document
models:
  - model: quick
  - model: long
merge_method: linear
---
models:
  - model: quick
  - model: long
merge_method: linear
YAML

# The README's tokenizer_source: union builds a new vocabulary.
cat >"$out/reject-tokenizer-union.yml" <<'YAML'
# expect: tokenizer_source: "union"
models:
  - model: quick
  - model: long
merge_method: linear
tokenizer_source: union
YAML

echo "wrote $(ls "$out" | wc -l) files to $out"

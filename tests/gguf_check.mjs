// Reads a GGUF file mergescope wrote with @huggingface/gguf (pinned in
// tests/package.json, a reader nobody here wrote) and checks it against the
// safetensors model directory mergescope wrote from the same recipe:
// metadata, tensor infos and every tensor's bytes.
//
// usage: node gguf_check.mjs FILE.gguf REF_DIR DTYPE TOKENIZER_DIR
//   DTYPE bf16 | f16 | f32: REF_DIR holds the merge in that dtype; matrices
//         must hold its bytes, norms and biases its values as F32.
//   DTYPE q8_0: REF_DIR holds the merge in f32; matrices must be the Q8_0
//         blocks of llama.cpp's reference quantiser (quantize_row_q8_0_ref,
//         written out again below), norms and biases the f32 values.
// Llama files must hold q/k rows in the order llama.cpp's converter gives
// them (LlamaModel.permute). Prints one line per failed check and exits 1
// on any failure.
import { gguf } from "@huggingface/gguf";
import fs from "node:fs";
import path from "node:path";

const [file, refDir, dtype, tokDir] = process.argv.slice(2);
let failures = 0;
function fail(msg) {
    failures++;
    console.log(`      ${msg}`);
}
function expect(cond, msg) {
    if (!cond) fail(msg);
}

// ----- the reference: safetensors, config, tokenizer -----

function readSafetensors(dir) {
    const buf = fs.readFileSync(path.join(dir, "model.safetensors"));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
    const tensors = {};
    for (const [name, t] of Object.entries(header)) {
        if (name === "__metadata__") continue;
        const [b, e] = t.data_offsets;
        tensors[name] = { dtype: t.dtype, shape: t.shape, bytes: buf.subarray(8 + n + b, 8 + n + e) };
    }
    return tensors;
}

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function bitsToF32(bits) {
    u32[0] = bits >>> 0;
    return f32[0];
}
function f16ToF32(h) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e === 0) return s * m * 2 ** -24;
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (1 + m / 1024) * 2 ** (e - 15);
}
// float32 -> IEEE half, round to nearest even (ggml's GGML_FP32_TO_FP16).
function f32ToF16(v) {
    f32[0] = v;
    const x = u32[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
    const e = exp - 127 + 15;
    if (e >= 0x1f) return sign | 0x7c00;
    if (e <= 0) {
        if (e < -10) return sign;
        mant |= 0x800000;
        const shift = 14 - e;
        let h = mant >>> shift;
        const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
        if (rem > half || (rem === half && (h & 1))) h++;
        return sign | h;
    }
    let h = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
    return sign | h;
}
function toFloats(t) {
    const n = t.bytes.length / (t.dtype === "F32" ? 4 : 2);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
        if (t.dtype === "F32") out[i] = t.bytes.readFloatLE(4 * i);
        else if (t.dtype === "BF16") out[i] = bitsToF32(t.bytes.readUInt16LE(2 * i) << 16);
        else out[i] = f16ToF32(t.bytes.readUInt16LE(2 * i));
    }
    return out;
}
// llama.cpp's quantize_row_q8_0_ref for one row-major run of values.
function quantizeQ8(vals) {
    const out = Buffer.alloc((vals.length / 32) * 34);
    for (let g = 0; g < vals.length / 32; g++) {
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(vals[32 * g + j]));
        const d = Math.fround(amax / 127);
        const id = d ? Math.fround(1 / d) : 0;
        out.writeUInt16LE(f32ToF16(d), 34 * g);
        for (let j = 0; j < 32; j++) {
            const x0 = Math.fround(vals[32 * g + j] * id);
            const q = Math.sign(x0) * Math.floor(Math.abs(x0) + 0.5);
            out.writeInt8(q, 34 * g + 2 + j);
        }
    }
    return out;
}

const config = JSON.parse(fs.readFileSync(path.join(refDir, "config.json"), "utf8"));
const ref = readSafetensors(refDir);
const tokJson = JSON.parse(fs.readFileSync(path.join(tokDir, "tokenizer.json"), "utf8"));
const tokCfg = JSON.parse(fs.readFileSync(path.join(tokDir, "tokenizer_config.json"), "utf8"));
const arch = config.model_type;

// ----- the file -----

const { typedMetadata: md, tensorInfos, tensorDataOffset } = await gguf(path.resolve(file), {
    allowLocalFile: true,
    typedMetadata: true,
});
const UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9;
function kv(key, type, value) {
    const e = md[key];
    if (!e) return fail(`metadata ${key} missing`);
    if (e.type !== type) return fail(`metadata ${key}: type ${e.type}, expected ${type}`);
    if (value !== undefined && e.value !== value) fail(`metadata ${key} = ${e.value}, expected ${value}`);
}

expect(md.version.value === 3, `version ${md.version.value}`);
kv("general.architecture", STRING, arch);
kv(`${arch}.block_count`, UINT32, config.num_hidden_layers);
kv(`${arch}.context_length`, UINT32, config.max_position_embeddings);
kv(`${arch}.embedding_length`, UINT32, config.hidden_size);
kv(`${arch}.feed_forward_length`, UINT32, config.intermediate_size);
kv(`${arch}.attention.head_count`, UINT32, config.num_attention_heads);
kv(`${arch}.attention.head_count_kv`, UINT32, config.num_key_value_heads);
kv(`${arch}.attention.key_length`, UINT32, config.hidden_size / config.num_attention_heads);
kv(`${arch}.rope.freq_base`, FLOAT32, Math.fround(config.rope_theta));
kv(`${arch}.attention.layer_norm_rms_epsilon`, FLOAT32, Math.fround(config.rms_norm_eps));
if (arch === "llama") {
    kv("llama.rope.dimension_count", UINT32, config.hidden_size / config.num_attention_heads);
    kv("llama.vocab_size", UINT32, config.vocab_size);
}
kv("general.file_type", UINT32, { f32: 0, f16: 1, q8_0: 7, bf16: 32 }[dtype]);
kv("general.quantization_version", UINT32, 2);
kv("mergescope.recipe", STRING);
expect(md["mergescope.recipe"] && JSON.parse(md["mergescope.recipe"].value).format === "mergescope-recipe/1",
       "mergescope.recipe is not the recipe");

// Tokenizer: one token per embedding row, as the converter lists them.
const rows = ref["model.embed_tokens.weight"].shape[0];
kv("tokenizer.ggml.model", STRING, "gpt2");
kv("tokenizer.ggml.pre", STRING, "qwen2");
kv("tokenizer.ggml.tokens", ARRAY);
kv("tokenizer.ggml.token_type", ARRAY);
kv("tokenizer.ggml.merges", ARRAY);
const tokens = md["tokenizer.ggml.tokens"]?.value ?? [];
const types = md["tokenizer.ggml.token_type"]?.value ?? [];
expect(md["tokenizer.ggml.token_type"]?.subType === INT32, "token types are not INT32");
expect(tokens.length === rows && types.length === rows,
       `${tokens.length} tokens and ${types.length} types for ${rows} embedding rows`);
const want = new Array(rows).fill(null), wantType = new Array(rows).fill(5);
for (const [t, id] of Object.entries(tokJson.model.vocab)) {
    want[id] = t;
    wantType[id] = 1;
}
for (const a of tokJson.added_tokens) {
    want[a.id] = a.content;
    wantType[a.id] = a.special || /^<\|.*\|>$/.test(a.content) ? 3 : 4;
}
let bad = 0;
for (let i = 0; i < rows; i++) {
    const w = want[i] ?? `[PAD${i}]`;
    if (tokens[i] !== w || types[i] !== wantType[i]) {
        if (bad++ < 3) fail(`token ${i}: '${tokens[i]}' type ${types[i]}, expected '${w}' type ${wantType[i]}`);
    }
}
const merges = tokJson.model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m));
const gotMerges = md["tokenizer.ggml.merges"]?.value ?? [];
expect(gotMerges.length === merges.length && merges.every((m, i) => gotMerges[i] === m),
       `merges differ (${gotMerges.length} vs ${merges.length})`);
const idOf = (content) => tokJson.added_tokens.find((a) => a.content === content)?.id;
kv("tokenizer.ggml.eos_token_id", UINT32, idOf(tokCfg.eos_token));
kv("tokenizer.ggml.padding_token_id", UINT32, idOf(tokCfg.pad_token));
kv("tokenizer.ggml.bos_token_id", UINT32, tokCfg.bos_token ? idOf(tokCfg.bos_token) : config.bos_token_id);
expect(!md["tokenizer.ggml.add_bos_token"], "add_bos_token written though nothing asks for a BOS");
kv("tokenizer.chat_template", STRING, tokCfg.chat_template);

// ----- tensors -----

const layerMap = {
    input_layernorm: "attn_norm", post_attention_layernorm: "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
};
function ggufName(hf) {
    if (hf === "model.embed_tokens.weight") return "token_embd.weight";
    if (hf === "model.norm.weight") return "output_norm.weight";
    if (hf === "lm_head.weight") return "output.weight";
    const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hf);
    return m && layerMap[m[2]] ? `blk.${m[1]}.${layerMap[m[2]]}.${m[3]}` : null;
}
const GGML = { F32: 0, F16: 1, Q8_0: 8, BF16: 30 };
const matrixType = { f32: GGML.F32, f16: GGML.F16, bf16: GGML.BF16, q8_0: GGML.Q8_0 }[dtype];
const fd = fs.openSync(file, "r");
function readAt(offset, n) {
    const b = Buffer.alloc(n);
    fs.readSync(fd, b, 0, n, offset);
    return b;
}
const byName = new Map(tensorInfos.map((t) => [t.name, t]));
expect(tensorDataOffset % 32n === 0n, `data region at ${tensorDataOffset}, not a multiple of 32`);
expect(tensorInfos.length === Object.keys(ref).length,
       `${tensorInfos.length} tensors in the GGUF file, ${Object.keys(ref).length} in the reference`);

// LlamaModel.permute: rows (n_head, 2, d/2) -> (n_head, d/2, 2).
function permuteRows(vals, rowsN, cols, nHead) {
    const d = rowsN / nHead, out = new Float64Array(vals.length);
    for (let h = 0; h < nHead; h++)
        for (let j = 0; j < 2; j++)
            for (let i = 0; i < d / 2; i++) {
                const from = h * d + j * (d / 2) + i, to = h * d + 2 * i + j;
                out.set(vals.subarray(from * cols, (from + 1) * cols), to * cols);
            }
    return out;
}

let checked = 0;
for (const [hf, t] of Object.entries(ref)) {
    const name = ggufName(hf);
    const info = name && byName.get(name);
    if (!info) {
        fail(`${hf}: no ${name} in the GGUF file`);
        continue;
    }
    const shape = info.shape.map(Number);
    const revShape = [...t.shape].reverse();
    if (shape.join(",") !== revShape.join(",")) {
        fail(`${name}: ne [${shape}], expected [${revShape}]`);
        continue;
    }
    if (info.offset % 32n !== 0n) fail(`${name}: offset ${info.offset} not aligned to 32`);
    const vector = t.shape.length === 1 || name.endsWith("_norm.weight");
    const type = vector ? GGML.F32 : matrixType;
    if (info.dtype !== type) {
        fail(`${name}: ggml type ${info.dtype}, expected ${type}`);
        continue;
    }
    let vals = toFloats(t);
    const rowsN = t.shape[0], cols = t.shape.length > 1 ? t.shape[1] : 1;
    if (arch === "llama" && /\.attn_[qk]\./.test(name))
        vals = permuteRows(vals, rowsN, cols, name.includes("attn_q")
                           ? config.num_attention_heads : config.num_key_value_heads);
    const n = vals.length;
    const at = Number(tensorDataOffset + info.offset);
    let got, expected;
    if (type === GGML.F32) {
        got = readAt(at, 4 * n);
        expected = Buffer.alloc(4 * n);
        vals.forEach((v, i) => expected.writeFloatLE(v, 4 * i));
    } else if (type === GGML.Q8_0) {
        got = readAt(at, (n / 32) * 34);
        expected = quantizeQ8(vals);
        // and the dequantised values within half a step of the merge (plus
        // what the scale's rounding to f16, 2^-11 relative, adds)
        let worst = 0;
        for (let g = 0; g < n / 32; g++) {
            const d = f16ToF32(got.readUInt16LE(34 * g));
            for (let j = 0; j < 32; j++) {
                const x = vals[32 * g + j];
                worst = Math.max(worst, Math.abs(d * got.readInt8(34 * g + 2 + j) - x) - d / 2 - Math.abs(x) * 2 ** -10);
            }
        }
        expect(worst <= 1e-7, `${name}: a dequantised value is ${worst} past half a Q8_0 step from the merge`);
    } else {
        got = readAt(at, 2 * n);
        expected = Buffer.alloc(2 * n);
        vals.forEach((v, i) => {
            f32[0] = v;
            expected.writeUInt16LE(type === GGML.BF16 ? u32[0] >>> 16 : f32ToF16(v), 2 * i);
        });
    }
    if (!got.equals(expected)) {
        let i = 0;
        while (i < got.length && got[i] === expected[i]) i++;
        fail(`${name}: bytes differ from the reference at byte ${i} of ${got.length}`);
    }
    checked++;
}
fs.closeSync(fd);
expect(checked === Object.keys(ref).length, `${checked} tensors compared`);
if (failures === 0) console.log(`      ${checked} tensors and ${Object.keys(md).length} keys checked`);
process.exit(failures ? 1 : 0);

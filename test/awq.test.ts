// AWQ W4A16 parity on ../shared/fixtures/awq (copied to test/fixtures/awq), whose goldens come from
// AutoAWQ's own pack / dequantize code (see its README).
//
// Tolerances:
// - unpacked q and zero points: exact; dequantized weights q * s - z * s: bit-exact against the
//   fixture's f32 `weight_dequant_exact` (every value is exact in f32).
// - a linear layer's output. Prefill (many rows) dequantizes as AutoAWQ does, rounding each weight
//   once to fp16, then f32 math: within 1e-5 of `y` (computed over AutoAWQ's fp16 weights). Decode
//   (one row) multiplies the exact weights in integers, the activations quantized to 15 bits:
//   within sx/2 * sum|w| + 1e-5 of `y_exact`, sx = max|x| / 16383.
// - the tiny AWQ Llama (goldens: a float64 forward over AutoAWQ's fp16-dequantized weights):
//   prefill hidden states within 1e-4 and logits within 1e-3 (the bound; measured 7e-6);
//   one token at a time (decode kernels: exact weights, 15-bit activations) logits within 1e-2
//   (measured 3.2e-3: the fp16 rounding of the weights, up to 2^-11 relative, is what differs);
//   greedy tokens identical at every position either way.
// - W4A8 (opt-in: activations quantized to i8 per group of 128 in decode): logits within 1 of the
//   goldens (measured 0.41; logits span +-8.4, std 2.07), greedy tokens identical.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { TensorInfo, TensorSource, readTensorF32, readTensorInt } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { TorchPtError, unpickle } from '../src/formats/torch-pt.js';
import fs from 'node:fs';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import type { LinearWeight, Matrix, ParamVector } from '../src/kernels/backend.js';
import { WeightLoader } from '../src/model/weights.js';
import { LlamaDecoder } from '../src/model/llama.js';
import { loadConfig } from '../src/model/registry.js';
import { CausalLmConfig } from '../src/model/causal-lm/family.js';
import { unpackAwqGemm } from '../src/model/weight-formats/awq-gemm.js';
import { groupSizeOf, paddedGroups, unpackAwqV2 } from '../src/model/weight-formats/awq-v2.js';
import * as ref from './reference.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { inspectModel } from '../src/engine/inspect.js';
import { assertClose, absRel, fixture, tempDir } from './helpers.js';

const awq = (name: string) => fixture(`awq/${name}`);

/** A checkpoint whose tensor names get a prefix (the linear fixtures store bare buffer names). */
function prefixed(ck: Checkpoint, prefix: string): TensorSource & { names(): string[] } {
  const strip = (n: string) => (n.startsWith(prefix) ? n.slice(prefix.length) : `\0${n}`);
  return {
    info: (n: string): TensorInfo => ({ ...ck.info(strip(n)), name: n }),
    readInto: (n: string, dest: Uint8Array) => ck.readInto(strip(n), dest),
    names: () => ck.names().map((n) => prefix + n),
  };
}

function raw(ck: Checkpoint, name: string): Uint8Array {
  const out = new Uint8Array(ck.info(name).byteLength);
  ck.readInto(name, out);
  return out;
}

/**
 * One row at a time (the GEMV): each output row within the 15-bit-activation bound of the exact
 * product, sx / 2 * sum|w| + 1e-5 with sx = max|x| / 16383 (the linear fixtures have one group
 * scale per 128 inputs; the bound with the row's max covers every group's).
 */
function checkGemvRows(
  be: WasmBackend,
  W: LinearWeight,
  bias: ParamVector,
  xm: Matrix,
  y: Matrix,
  x: Float32Array,
  exact: Float32Array,
  want: Float32Array,
  K: number,
  N: number,
): void {
  for (let r = 0; r < x.length / K; r++) {
    be.matmul(y.view(r, 1), xm.view(r, 1), W, bias);
    const sx = x.subarray(r * K, (r + 1) * K).reduce((a, v) => Math.max(a, Math.abs(v)), 0) / 16383;
    const bound = (i: number) => {
      let sw = 0;
      for (let k = 0; k < K; k++) sw += Math.abs(exact[(i % N) * K + k]);
      return (sx / 2) * sw + 1e-5;
    };
    assertClose(be.read(y.view(r, 1)), want.subarray(r * N, (r + 1) * N), bound, `GEMV output, row ${r} (exact weights)`);
  }
}

const argmaxRows = (a: Float32Array, rows: number, V: number) =>
  Array.from({ length: rows }, (_, r) => {
    let b = 0;
    for (let i = 1; i < V; i++) if (a[r * V + i] > a[r * V + b]) b = i;
    return b;
  });

describe('AWQ W4A16: AutoAWQ GEMM checkpoints', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });

  it('awq-gemm-linear: unpacked q and zeros exact, dequantized weights bit-exact, layer outputs (GEMM and GEMV)', () => {
    const dir = awq('awq-gemm-linear');
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const N = 192,
      K = 256,
      groups = 2;
    const parts = { q: new Uint8Array((N * K) / 2), scales: new Float32Array(N * groups), offsets: new Float32Array(N * groups) };
    unpackAwqGemm(
      { qweight: new Uint32Array(raw(ck, 'qweight').buffer), qzeros: new Uint32Array(raw(ck, 'qzeros').buffer), scales: readTensorF32(ck, 'scales') },
      N,
      K,
      groups,
      parts,
    );
    const q = readTensorInt(g, 'q'),
      zeros = readTensorInt(g, 'zeros'),
      exact = readTensorF32(g, 'weight_dequant_exact');
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        const i = n * K + k;
        const got = (parts.q[i >> 1] >> ((i & 1) * 4)) & 15;
        if (got !== q[i]) assert.fail(`q[${n}, ${k}] = ${got}, golden ${q[i]}`);
        const gi = n * groups + Math.floor(k / 128);
        const w = Math.fround(got * parts.scales[gi] + parts.offsets[gi]);
        if (w !== exact[i]) assert.fail(`w[${n}, ${k}] = ${w}, golden ${exact[i]}`);
      }
      for (let gg = 0; gg < groups; gg++) {
        const z = -parts.offsets[n * groups + gg] / parts.scales[n * groups + gg];
        assert.equal(z === 0 ? 0 : z, zeros[n * groups + gg], `zero point [${n}, ${gg}]`);
      }
    }
    // Through the loader: the format is recognised by its tensors; the bias is a plain vector.
    const src = prefixed(ck, 'layer.');
    const loader = new WeightLoader(be, src, dir);
    const W = loader.linear([{ name: 'layer.weight', shape: [N, K] }]);
    const bias = loader.params([{ name: 'layer.bias', shape: [N] }]);
    loader.checkAllUsed(src.names());
    assert.deepEqual(loader.formats, ['awq-gemm']);
    assert.equal(W.dtype, 'int4');
    assert.equal(W.groupSize, 128);
    const x = readTensorF32(g, 'x'),
      yExact = readTensorF32(g, 'y_exact');
    const xm = be.matrix(5, K),
      y = be.matrix(5, N);
    be.write(xm, x);
    be.matmul(y, xm, W, bias);
    assertClose(be.read(y), readTensorF32(g, 'y'), absRel(1e-5, 0), 'GEMM output (fp16-dequantized weights, as AutoAWQ)');
    checkGemvRows(be, W, bias, xm, y, x, exact, yExact, K, N);
    ck.close();
    g.close();
  });

  it('awq-gemm-llama-tiny: hidden states, logits within 1e-3 and greedy tokens, in prefill and one token at a time', async () => {
    const dir = awq('awq-gemm-llama-tiny');
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as CausalLmConfig;
    const loader = new WeightLoader(be, ck, dir);
    const dec = await LlamaDecoder.load(loader, cfg, { prefix: 'model.', lmHead: 'lm_head.weight' });
    loader.checkAllUsed(ck.names());
    assert.deepEqual(loader.formats.sort(), ['awq-gemm', 'dense']);
    const ids = readTensorInt(g, 'input_ids'),
      S = ids.length,
      H = cfg.hiddenSize,
      V = cfg.vocabSize;
    const x = be.matrix(S, H);
    dec.embed(x, ids);
    assertClose(be.read(x), readTensorF32(g, 'hidden.embed'), absRel(0, 0), 'embeddings');
    const cache = dec.newCache();
    const range = (n: number) => Array.from({ length: n }, (_, i) => i);
    const logits = dec.forward(x, cache, 0, range(S), {
      logitRows: range(S),
      onHidden: (l, m) => assertClose(be.read(m), readTensorF32(g, `hidden.layer${l}`), absRel(1e-4, 0), `hidden state after layer ${l}`),
    });
    const want = readTensorF32(g, 'logits');
    assertClose(logits, want, absRel(1e-3, 0), 'logits (prefill)');
    const argmax = [471, 50, 481, 315, 99, 151, 146, 145, 21, 138, 480, 149, 199, 320, 355, 240];
    assert.deepEqual(argmaxRows(want, S, V), argmax);
    assert.deepEqual(argmaxRows(logits, S, V), argmax);
    // One token at a time: every matmul takes the one-row (GEMV) path.
    dec.freeCache(cache);
    const c2 = dec.newCache();
    const y = be.matrix(1, H);
    for (let s = 0; s < S; s++) {
      dec.embed(y, [ids[s]]);
      const l = dec.forward(y, c2, s, [s]);
      assertClose(l, want.subarray(s * V, (s + 1) * V), absRel(1e-2, 0), `logits at step ${s} (decode)`);
      assert.equal(argmaxRows(l, 1, V)[0], argmax[s], `greedy token at step ${s}`);
    }
    dec.freeCache(c2);
    ck.close();
    g.close();
  });

  it('W4A8 (int4Activations i8): decode logits of the tiny AWQ Llama within 1 of the goldens (measured 0.41), greedy tokens identical', async () => {
    const dir = awq('awq-gemm-llama-tiny');
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as CausalLmConfig;
    const dec = await LlamaDecoder.load(new WeightLoader(be, ck, dir, { int4Activations: 'i8' }), cfg, { prefix: 'model.', lmHead: 'lm_head.weight' });
    const ids = readTensorInt(g, 'input_ids'),
      V = cfg.vocabSize;
    const want = readTensorF32(g, 'logits');
    const argmax = argmaxRows(want, ids.length, V);
    const cache = dec.newCache();
    const y = be.matrix(1, cfg.hiddenSize);
    let worst = 0;
    for (let s = 0; s < ids.length; s++) {
      dec.embed(y, [ids[s]]);
      const l = dec.forward(y, cache, s, [s]);
      worst = Math.max(worst, assertClose(l, want.subarray(s * V, (s + 1) * V), absRel(1, 0), `W4A8 logits at step ${s}`).maxAbs);
      assert.equal(argmaxRows(l, 1, V)[0], argmax[s], `W4A8 greedy token at step ${s}`);
    }
    // Quantized activations: not the W4A16 result (the option took effect).
    assert.ok(worst > 3e-3, `W4A8 logits differ by only ${worst}`);
    dec.freeCache(cache);
    ck.close();
    g.close();
  });

  it('the engine loads an AWQ folder like any other; inspect names the weight format', async () => {
    const dir = awq('awq-gemm-llama-tiny');
    const m = await VisionLanguageModel.load(dir, { threads: 1 });
    try {
      const r = await m.generate({ inputIds: [339, 409, 274, 358] }, { maxNewTokens: 4 });
      assert.equal(r.ids.length, 4);
      assert.equal(r.ids[0], 315); // the golden argmax after these four tokens
    } finally {
      await m.close();
    }
    const info = await inspectModel(dir);
    assert.deepEqual(info.problems, []);
    assert.deepEqual(info.weightFormats, ['awq-gemm', 'dense']);
  });
});

describe('AWQ W4A16: TinyChat v2 (llm-awq) linears', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });

  it('padded group rows: calculate_zeros_width as llm-awq computes it', () => {
    assert.equal(paddedGroups(256, 128), 8);
    assert.equal(paddedGroups(4096, 128), 32);
    assert.equal(paddedGroups(4096, 64), 64);
    assert.equal(paddedGroups(4096, 32), 128);
    assert.equal(paddedGroups(2560, 128), 24);
    assert.equal(groupSizeOf(256, 8), 128);
    assert.equal(groupSizeOf(4096, 64), 64);
    assert.equal(groupSizeOf(4096, 40), null);
  });

  it('tinychat-v2-linear (safetensors): q exact, q * s + scaled_zeros bit-exact, layer outputs (GEMM and GEMV)', () => {
    const dir = awq('tinychat-v2-linear');
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const N = 128,
      K = 256,
      groups = 2;
    const parts = { q: new Uint8Array((N * K) / 2), scales: new Float32Array(N * groups), offsets: new Float32Array(N * groups) };
    unpackAwqV2(
      { qweight: new Uint16Array(raw(ck, 'qweight').buffer), scales: readTensorF32(ck, 'scales'), scaledZeros: readTensorF32(ck, 'scaled_zeros') },
      N,
      K,
      groups,
      parts,
    );
    const q = readTensorInt(g, 'q'),
      exact = readTensorF32(g, 'weight_dequant');
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        const i = n * K + k;
        const got = (parts.q[i >> 1] >> ((i & 1) * 4)) & 15;
        if (got !== q[i]) assert.fail(`q[${n}, ${k}] = ${got}, golden ${q[i]}`);
        const gi = n * groups + Math.floor(k / 128);
        const w = Math.fround(got * parts.scales[gi] + parts.offsets[gi]);
        if (w !== exact[i]) assert.fail(`w[${n}, ${k}] = ${w}, golden ${exact[i]}`);
      }
    }
    const src = prefixed(ck, 'layer.');
    const loader = new WeightLoader(be, src, dir);
    const W = loader.linear([{ name: 'layer.weight', shape: [N, K] }]);
    const bias = loader.params([{ name: 'layer.bias', shape: [N] }]);
    loader.checkAllUsed(src.names());
    assert.deepEqual(loader.formats, ['awq-v2']);
    assert.equal(W.groupSize, 128);
    assert.equal(W.dequantRounding, 'f16');
    const x = readTensorF32(g, 'x'),
      y = readTensorF32(g, 'y');
    const xm = be.matrix(5, K),
      ym = be.matrix(5, N);
    be.write(xm, x);
    be.matmul(ym, xm, W, bias);
    // Prefill: TinyChat's fp16 FMA weights (weight_dequant_f16), f32 math.
    const want = ref.matmul(x, 5, K, readTensorF32(g, 'weight_dequant_f16'), N, readTensorF32(ck, 'bias'));
    assertClose(be.read(ym), want.y, absRel(1e-5, 0), 'GEMM output (fp16 weights, as TinyChat)');
    checkGemvRows(be, W, bias, xm, ym, x, exact, y, K, N);
    ck.close();
    g.close();
  });
});

// ---- PyTorch .pt state dicts --------------------------------------------------------------------

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A zip archive of stored (uncompressed) entries, as torch.save writes them. */
function zip(entries: [string, Uint8Array][]): Uint8Array {
  const chunks: Uint8Array[] = [],
    central: Uint8Array[] = [];
  let off = 0;
  for (const [name, data] of entries) {
    const n = new TextEncoder().encode(name);
    const h = new DataView(new ArrayBuffer(30));
    h.setUint32(0, 0x04034b50, true);
    h.setUint32(14, crc32(data), true);
    h.setUint32(18, data.length, true);
    h.setUint32(22, data.length, true);
    h.setUint16(26, n.length, true);
    const c = new DataView(new ArrayBuffer(46));
    c.setUint32(0, 0x02014b50, true);
    c.setUint32(16, crc32(data), true);
    c.setUint32(20, data.length, true);
    c.setUint32(24, data.length, true);
    c.setUint16(28, n.length, true);
    c.setUint32(42, off, true);
    chunks.push(new Uint8Array(h.buffer), n, data);
    central.push(new Uint8Array(c.buffer), n);
    off += 30 + n.length + data.length;
  }
  const cdSize = central.reduce((a, b) => a + b.length, 0);
  const e = new DataView(new ArrayBuffer(22));
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, entries.length, true);
  e.setUint16(10, entries.length, true);
  e.setUint32(12, cdSize, true);
  e.setUint32(16, off, true);
  return Buffer.concat([...chunks, ...central, new Uint8Array(e.buffer)]);
}

const ascii = (s: string) => Array.from(new TextEncoder().encode(s));
/** A protocol-2 pickle: GLOBAL module.name, its string argument, REDUCE. */
const callPickle = (module: string, name: string, arg: string) =>
  Uint8Array.from([0x80, 2, 0x63, ...ascii(`${module}\n${name}\n`), 0x58, ...[arg.length, 0, 0, 0], ...ascii(arg), 0x85, 0x52, 0x2e]);

describe('PyTorch .pt checkpoints: a restricted reader', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 1 });
  });
  after(async () => {
    await be.close();
  });

  it('tinychat-v2-linear/model.pt holds the same tensors as its safetensors, and loads as awq-v2 with the same outputs', () => {
    const dir = awq('tinychat-v2-linear');
    const pt = Checkpoint.open(path.join(dir, 'model.pt')),
      st = Checkpoint.open(path.join(dir, 'model.safetensors'));
    assert.deepEqual(pt.names().sort(), st.names().sort());
    for (const n of st.names()) {
      assert.equal(pt.info(n).dtype, st.info(n).dtype, n);
      assert.deepEqual(pt.info(n).shape, st.info(n).shape, n);
      assert.deepEqual(raw(pt, n), raw(st, n), n);
    }
    // A folder whose only checkpoint is one .pt opens it.
    const folder = tempDir('sparsevila-pt-');
    fs.copyFileSync(path.join(dir, 'model.pt'), path.join(folder, 'llm-w4-g128-awq-v2.pt'));
    const viaDir = Checkpoint.open(folder);
    assert.deepEqual(viaDir.names().sort(), st.names().sort());
    const outputs = (ck: Checkpoint) => {
      const src = prefixed(ck, 'layer.');
      const loader = new WeightLoader(be, src, dir);
      const W = loader.linear([{ name: 'layer.weight', shape: [128, 256] }]);
      assert.deepEqual(loader.formats, ['awq-v2']);
      const x = be.matrix(3, 256),
        y = be.matrix(3, 128);
      be.write(
        x,
        Float32Array.from({ length: 768 }, (_, i) => Math.sin(i)),
      );
      be.matmul(y, x, W);
      return be.read(y);
    };
    assert.deepEqual(outputs(viaDir), outputs(st));
    for (const c of [pt, st, viaDir]) c.close();
  });

  it('a pickle that calls a function is refused, names it, and runs nothing', () => {
    const marker = path.join(tempDir('sparsevila-pwn-'), 'ran');
    const evil = callPickle('os', 'system', `touch ${marker}`);
    assert.throws(
      () => unpickle(evil, 'evil.pt'),
      (e: unknown) => e instanceof TorchPtError && /refuses the global os\.system/.test((e as Error).message),
    );
    // The same inside a whole .pt file, through Checkpoint.open.
    const file = path.join(tempDir('sparsevila-pt-'), 'evil.pt');
    fs.writeFileSync(file, zip([['evil/data.pkl', evil]]));
    assert.throws(() => Checkpoint.open(file), /evil\.pt: refuses the global os\.system: only tensors, their storages and plain containers are read/);
    assert.equal(fs.existsSync(marker), false, 'nothing ran');
    // Other ways in: builtins.eval, an allowed global called the wrong way, an unknown instruction.
    assert.throws(() => unpickle(callPickle('builtins', 'eval', '1+1'), 'x.pt'), /refuses the global builtins\.eval/);
    assert.throws(() => unpickle(callPickle('collections', 'OrderedDict', 'a'), 'x.pt'), /OrderedDict called with arguments/);
    assert.throws(() => unpickle(Uint8Array.from([0x80, 2, 0x69, ...ascii('os\nsystem\n'), 0x2e]), 'x.pt'), /unsupported pickle instruction 0x69/);
    // Not a zip, or a zip without data.pkl.
    const junk = path.join(tempDir('sparsevila-pt-'), 'junk.pt');
    fs.writeFileSync(junk, new Uint8Array(100).fill(7));
    assert.throws(() => Checkpoint.open(junk), /junk\.pt: not a zip file/);
    fs.writeFileSync(junk, zip([['a/other', new Uint8Array(4)]]));
    assert.throws(() => Checkpoint.open(junk), /no data\.pkl in the archive/);
  });
});

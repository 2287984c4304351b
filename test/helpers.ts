// Test helpers: a seeded PRNG, exact conversions between f32 and the 16-bit storage dtypes, and
// comparison utilities, and the location of the test fixtures. Nothing here depends on the kernels.
import assert from 'node:assert/strict';
import type { WeightDType } from '../src/kernels/backend.js';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Rng as Mulberry32 } from '../src/engine/sampling.js';
import type { GenerateRequest, VisionLanguageModel } from '../src/engine/vlm.js';
import { densePrefill, sparseVilaPrefill } from '../src/sparsity/method.js';

/** Absolute path of a folder (or file) under test/fixtures (tests run from dist/test/). */
export const fixture = (name: string): string => fileURLToPath(new URL(`../../test/fixtures/${name}`, import.meta.url));

const tempDirs: string[] = [];
process.on('exit', () => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});
/** A new empty folder under the OS temp dir, removed when the test process exits. */
export function tempDir(prefix = 'sparsevila-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}

/** The llava-tiny golden prompt: the text, the text with `<image>` expanded, and its ids. */
export interface LlavaPrompt {
  text: string;
  text_after_expansion: string;
  input_ids: number[];
}
export const llavaGoldenPrompt = (): LlavaPrompt =>
  (JSON.parse(fs.readFileSync(path.join(fixture('llava-tiny'), 'golden.json'), 'utf8')) as { prompt: LlavaPrompt }).prompt;

// ---- random data -----------------------------------------------------------------------------

/** The engine's seeded PRNG (mulberry32) with helpers for test data: the same seed gives the same data. */
export class Rng extends Mulberry32 {
  /** Uniform in [lo, hi). */
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** n floats uniform in [lo, hi), rounded to f32. */
  f32(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.uniform(lo, hi);
    return a;
  }
  /** A random permutation of [0, n). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }
  /** k distinct values of [0, n), in random order. */
  subset(n: number, k: number): number[] {
    return this.permutation(n).slice(0, k);
  }
}

// ---- 16-bit floats -----------------------------------------------------------------------------

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** f32 bits of x (x is rounded to f32 first). */
export function f32Bits(x: number): number {
  f32buf[0] = x;
  return u32buf[0];
}
/** The f32 with these bits. */
export function bitsF32(b: number): number {
  u32buf[0] = b >>> 0;
  return f32buf[0];
}

/** x (rounded to f32) -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32ToBf16(x: number): number {
  const b = f32Bits(x);
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  const lsb = (b >>> 16) & 1;
  return ((b + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** bf16 bits -> its exact value. */
export function bf16ToNumber(h: number): number {
  return bitsF32((h & 0xffff) << 16);
}

/** x (rounded to f32) -> f16 bits, round to nearest even, with subnormals, overflow to infinity. */
export function f32ToF16(x: number): number {
  const b = f32Bits(x);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // re-bias 127 -> 15
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e; // value = mant * 2^(exp - 150), f16 subnormal unit 2^-24
    let m = mant >>> shift;
    const rem = mant & ((1 << shift) - 1),
      half = 1 << (shift - 1);
    if (rem > half || (rem === half && m & 1)) m++;
    return sign | m; // a carry into 0x400 is the smallest normal, correctly encoded
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry may reach infinity: correct
  return sign | h;
}

/** f16 bits -> its exact value (subnormals, infinities and NaN included). */
export function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f,
    mant = h & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** A weight in its storage dtype: the raw little-endian bytes and the exact values they hold. */
export interface StoredWeights {
  bytes: Uint8Array;
  values: Float64Array;
}

/** Rounds `data` to `dtype` (round to nearest even) and returns its bytes and exact values. */
export function toStorage(data: ArrayLike<number>, dtype: WeightDType): StoredWeights {
  const n = data.length;
  const values = new Float64Array(n);
  if (dtype === 'f32') {
    const f = Float32Array.from(data);
    values.set(f);
    return { bytes: new Uint8Array(f.buffer), values };
  }
  const u = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    u[i] = dtype === 'f16' ? f32ToF16(data[i]) : f32ToBf16(data[i]);
    values[i] = dtype === 'f16' ? f16ToNumber(u[i]) : bf16ToNumber(u[i]);
  }
  return { bytes: new Uint8Array(u.buffer), values };
}

/** Storage-dtype weights from raw 16-bit patterns. */
export function fromBits16(bits: Uint16Array, dtype: 'f16' | 'bf16'): StoredWeights {
  const values = new Float64Array(bits.length);
  for (let i = 0; i < bits.length; i++) values[i] = dtype === 'f16' ? f16ToNumber(bits[i]) : bf16ToNumber(bits[i]);
  return { bytes: new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength), values };
}

// ---- comparisons -----------------------------------------------------------------------------

export interface Diff {
  /** Largest |got - want|. */
  maxAbs: number;
  /** Largest |got - want| / tol (<= 1 passes). */
  worstRatio: number;
  /** Index of the worst element. */
  at: number;
}

/** Elementwise comparison against a tolerance per element. NaN anywhere in `got` fails. */
export function compare(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number, want: number) => number): Diff {
  assert.equal(got.length, want.length, `length ${got.length} != ${want.length}`);
  let maxAbs = 0,
    worstRatio = 0,
    at = -1;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    const r = Number.isNaN(d) ? Infinity : d / Math.max(tol(i, want[i]), Number.MIN_VALUE);
    if (d > maxAbs || Number.isNaN(d)) maxAbs = Number.isNaN(d) ? NaN : d;
    if (r > worstRatio || at < 0) {
      worstRatio = r;
      at = i;
    }
  }
  return { maxAbs, worstRatio, at };
}

/**
 * Asserts |got[i] - want[i]| <= tol(i, want[i]) for every i; the message names the worst element,
 * as (row, col) when `cols` is given.
 */
export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number, want: number) => number, what: string, cols?: number): Diff {
  const d = compare(got, want, tol);
  if (!(d.worstRatio <= 1)) {
    const i = d.at;
    const where = cols ? `[${Math.floor(i / cols)}, ${i % cols}]` : `[${i}]`;
    assert.fail(
      `${what}: element ${where} got ${got[i]}, expected ${want[i]} (|diff| ${Math.abs(got[i] - want[i]).toExponential(3)} > tol ${tol(i, want[i]).toExponential(3)}; max |diff| ${d.maxAbs})`,
    );
  }
  return d;
}

/** Tolerance function atol + rtol * |want|. */
export const absRel =
  (atol: number, rtol: number) =>
  (_i: number, w: number): number =>
    atol + rtol * Math.abs(w);

/** Asserts bitwise equality of two f32 arrays (NaN payloads aside: NaN matches NaN). */
export function assertSameF32(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (Object.is(got[i], want[i]) || (Number.isNaN(got[i]) && Number.isNaN(want[i]))) continue;
    assert.fail(`${what}: element ${i} got ${got[i]}, expected ${want[i]}`);
  }
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

// ---- model folders made by tests ----------------------------------------------------------------

/** A copy of a model folder whose files link to the originals; `edit` then changes what it needs. */
export function modelVariant(src: string, edit: (dir: string) => void = () => {}): string {
  const dir = tempDir('sparsevila-variant-');
  for (const f of fs.readdirSync(src)) fs.symlinkSync(path.join(src, f), path.join(dir, f));
  edit(dir);
  return dir;
}

/** Replaces a (linked) file of a folder with `content`, or removes it (null). */
export function replaceFile(dir: string, file: string, content: string | Buffer | null): void {
  const p = path.join(dir, file);
  fs.rmSync(p, { force: true });
  if (content !== null) fs.writeFileSync(p, content);
}

/** Rewrites a JSON file of a folder through `edit`. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests edit arbitrary JSON in place
export function editJson(dir: string, file: string, edit: (j: Record<string, any>) => void): void {
  const j = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as Parameters<typeof edit>[0];
  edit(j);
  replaceFile(dir, file, JSON.stringify(j, null, 2));
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of PNG chunks. */
export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The PNG `src` with a header (valid chunk, CRC included) that declares width x height: a small file that lies. */
export function pngDeclaring(src: string, width: number, height: number): Buffer {
  const b = Buffer.from(fs.readFileSync(src));
  b.writeUInt32BE(width, 16);
  b.writeUInt32BE(height, 20);
  b.writeUInt32BE(crc32(b.subarray(12, 29)), 29);
  return b;
}

/**
 * p = d = 0 is dense, bit for bit: the image rows of SparseVILA at p = 0 equal the dense rows
 * exactly (same units), and generating with prefillSparsity = decodeSparsity = 0 gives the dense
 * tokens and text.
 */
export async function assertZeroSparsityIsDense(model: VisionLanguageModel, req: GenerateRequest): Promise<void> {
  const images = req.images ?? [];
  const dense = await model.imageFeatures(images, densePrefill);
  const zero = await model.imageFeatures(images, sparseVilaPrefill(0));
  try {
    dense.forEach((d, i) => {
      assert.deepEqual(zero[i].units, d.units, `image ${i}: units at p = 0`);
      assert.deepEqual(model.backend.read(zero[i].features), model.backend.read(d.features), `image ${i}: rows at p = 0 are not bit-identical`);
    });
  } finally {
    for (const r of [...dense, ...zero]) model.backend.free(r.features);
  }
  const a = await model.generate(req, { maxNewTokens: 4, eosTokenIds: [] });
  const b = await model.generate(req, { maxNewTokens: 4, eosTokenIds: [], prefillSparsity: 0, decodeSparsity: 0 });
  assert.deepEqual([b.ids, b.text, b.stats.imageTokens], [a.ids, a.text, a.stats.imageTokens]);
}

// Random-weight models for the benchmarks: a TensorSource that describes the tensors of a Llama
// checkpoint of a given shape (BF16) and fills them with deterministic pseudo-random finite values
// on demand, so a multi-gigabyte model never exists on disk or on the JS heap.
import { TensorInfo, TensorSource } from '../src/formats/safetensors.js';

/** The shape of a Llama-family decoder, in config.json's field names. */
export interface LlamaShape {
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  intermediate_size: number;
  vocab_size: number;
  tie_word_embeddings: boolean;
  rope_theta: number;
  rms_norm_eps: number;
  max_position_embeddings: number;
}

/** A config.json object for `shape` (model_type llama, bf16). */
export function llamaConfigJson(shape: LlamaShape): Record<string, unknown> {
  return { model_type: 'llama', hidden_act: 'silu', torch_dtype: 'bfloat16', ...shape };
}

/** FNV-1a of a name: a per-tensor seed. */
function seedOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Fills `dest` with bf16 values. `norm`: values in [1, 1.0547] (norm weights, ~1); otherwise
 * random-sign values of magnitude in [2^-7, 2^-5) = [0.0078, 0.031) (exponent 120 or 121, random
 * mantissa; RMS about 0.02), so activations stay finite. Writes two bf16 values per 32-bit word.
 */
export function fillBf16(dest: Uint8Array, seed: number, norm: boolean): void {
  let s = seed >>> 0 || 1;
  // Numerical Recipes LCG: fast and good enough for weights whose values do not matter.
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  // Per 16-bit half: norm → 0x3f80 | 3 random mantissa bits (1.0 .. 1.0547);
  // other → sign | exponent 0x78 or 0x79 | 7 random mantissa bits.
  const mask = norm ? 0x00070007 : 0x80ff80ff;
  const base = norm ? 0x3f803f80 : 0x3c003c00;
  let off = dest.byteOffset;
  const end = dest.byteOffset + dest.byteLength;
  if (dest.byteLength % 2 !== 0) throw new Error(`fillBf16: odd byte length ${dest.byteLength}`);
  if (off % 4 !== 0 && off < end) {
    new Uint16Array(dest.buffer, off, 1)[0] = ((next() & mask) | base) & 0xffff;
    off += 2;
  }
  const words = Math.floor((end - off) / 4);
  const w = new Uint32Array(dest.buffer, off, words);
  for (let i = 0; i < words; i++) w[i] = (next() & mask) | base;
  off += words * 4;
  if (off < end) new Uint16Array(dest.buffer, off, 1)[0] = ((next() & mask) | base) & 0xffff;
}

/**
 * Tensors of given names and shapes (BF16) with random contents: norm weights near 1, everything
 * else small (see fillBf16).
 */
export class RandomTensorSource implements TensorSource {
  protected readonly tensors = new Map<string, TensorInfo>();

  constructor(
    shapes: ReadonlyMap<string, readonly number[]>,
    readonly label: string,
    readonly seed = 0x5eed,
  ) {
    for (const [name, dims] of shapes) this.add(name, [...dims]);
  }

  protected add(name: string, dims: number[]): void {
    const numel = dims.reduce((a, b) => a * b, 1);
    this.tensors.set(name, { name, dtype: 'BF16', shape: dims, numel, byteLength: numel * 2, file: this.label, fileOffset: 0 });
  }

  /** Bytes of all tensors. */
  get totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.byteLength;
    return n;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.label}: no tensor "${name}"`);
    return t;
  }

  readInto(name: string, dest: Uint8Array): void {
    const t = this.info(name);
    if (dest.byteLength !== t.byteLength) throw new Error(`${this.label}: "${name}" has ${t.byteLength} bytes, asked for ${dest.byteLength}`);
    // Every 1-D weight of these models is a norm's scale (biases are ".bias").
    fillBf16(dest, (seedOf(name) ^ this.seed) >>> 0, t.shape.length === 1 && name.endsWith('.weight'));
  }
}

/** The tensors of a Llama checkpoint of `shape` (BF16), with random contents. */
export class RandomLlamaSource extends RandomTensorSource {
  constructor(
    readonly shape: LlamaShape,
    label: string,
    seed = 0x5eed,
  ) {
    super(new Map(), label, seed);
    const s = shape,
      H = s.hidden_size,
      D = s.head_dim,
      I = s.intermediate_size;
    const add = (name: string, dims: number[]) => this.add(name, dims);
    add('model.embed_tokens.weight', [s.vocab_size, H]);
    for (let l = 0; l < s.num_hidden_layers; l++) {
      const p = `model.layers.${l}.`;
      add(`${p}input_layernorm.weight`, [H]);
      add(`${p}post_attention_layernorm.weight`, [H]);
      add(`${p}self_attn.q_proj.weight`, [s.num_attention_heads * D, H]);
      add(`${p}self_attn.k_proj.weight`, [s.num_key_value_heads * D, H]);
      add(`${p}self_attn.v_proj.weight`, [s.num_key_value_heads * D, H]);
      add(`${p}self_attn.o_proj.weight`, [H, s.num_attention_heads * D]);
      add(`${p}mlp.gate_proj.weight`, [I, H]);
      add(`${p}mlp.up_proj.weight`, [I, H]);
      add(`${p}mlp.down_proj.weight`, [H, I]);
    }
    add('model.norm.weight', [H]);
    if (!s.tie_word_embeddings) add('lm_head.weight', [s.vocab_size, H]);
  }
}

/** SmolVLM-256M's text model (hidden 576, 30 layers, 9 heads / 3 KV heads of 64, FFN 1536, vocabulary 49280, tied embeddings). */
export const SMOLVLM_TEXT_SHAPE: LlamaShape = {
  hidden_size: 576,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  head_dim: 64,
  intermediate_size: 1536,
  vocab_size: 49280,
  tie_word_embeddings: true,
  rope_theta: 100000,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 8192,
};

/** VILA1.5-3B's language model (hidden 2560, 32 layers, 20 heads / 20 KV heads of 128, FFN 6912, vocabulary 32000). */
export const VILA_3B_LLM_SHAPE: LlamaShape = {
  hidden_size: 2560,
  num_hidden_layers: 32,
  num_attention_heads: 20,
  num_key_value_heads: 20,
  head_dim: 128,
  intermediate_size: 6912,
  vocab_size: 32000,
  tie_word_embeddings: false,
  rope_theta: 10000,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 4096,
};

/** The decoder linears of a Llama layer, as [name, out, in] for `shape`. */
function llamaLinears(s: LlamaShape, l: number): [string, number, number][] {
  const H = s.hidden_size,
    D = s.head_dim,
    I = s.intermediate_size,
    p = `model.layers.${l}.`;
  return [
    [`${p}self_attn.q_proj`, s.num_attention_heads * D, H],
    [`${p}self_attn.k_proj`, s.num_key_value_heads * D, H],
    [`${p}self_attn.v_proj`, s.num_key_value_heads * D, H],
    [`${p}self_attn.o_proj`, H, s.num_attention_heads * D],
    [`${p}mlp.gate_proj`, I, H],
    [`${p}mlp.up_proj`, I, H],
    [`${p}mlp.down_proj`, H, I],
  ];
}

/**
 * A Llama checkpoint of `shape` as AutoAWQ saves it (GEMM layout, group size G): every decoder
 * linear as `qweight` I32 [in][out/8], `qzeros` I32 [in/G][out/8], `scales` F16 [in/G][out];
 * embeddings, norms and lm_head in BF16. Random nibbles and zeros, scales in [0.0017, 0.0024]
 * (weights of magnitude up to ~0.035, like the bf16 models').
 */
export class RandomAwqLlamaSource extends RandomLlamaSource {
  constructor(
    shape: LlamaShape,
    label: string,
    readonly groupSize: number,
    seed = 0x5eed,
  ) {
    super(shape, label, seed);
    for (let l = 0; l < shape.num_hidden_layers; l++) {
      for (const [base, N, K] of llamaLinears(shape, l)) {
        this.tensors.delete(`${base}.weight`);
        const G = groupSize;
        this.addTyped(`${base}.qweight`, 'I32', [K, N / 8]);
        this.addTyped(`${base}.qzeros`, 'I32', [K / G, N / 8]);
        this.addTyped(`${base}.scales`, 'F16', [K / G, N]);
      }
    }
  }

  private addTyped(name: string, dtype: 'I32' | 'F16', dims: number[]): void {
    const numel = dims.reduce((a, b) => a * b, 1);
    this.tensors.set(name, { name, dtype, shape: dims, numel, byteLength: numel * (dtype === 'I32' ? 4 : 2), file: this.label, fileOffset: 0 });
  }

  override readInto(name: string, dest: Uint8Array): void {
    const t = this.info(name);
    if (t.dtype === 'BF16') return super.readInto(name, dest);
    let s = (seedOf(name) ^ this.seed) >>> 0 || 1;
    const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
    if (t.dtype === 'I32') {
      const w = new Uint32Array(dest.buffer, dest.byteOffset, dest.byteLength / 4);
      for (let i = 0; i < w.length; i++) w[i] = next();
      return;
    }
    // F16 scales: 0x1700..0x18ff = 0.0017 .. 0.0024.
    const h = new Uint16Array(dest.buffer, dest.byteOffset, dest.byteLength / 2);
    for (let i = 0; i < h.length; i++) h[i] = 0x1700 + ((next() >>> 16) & 0x1ff);
  }
}

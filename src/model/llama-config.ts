// The config of a Llama-family decoder (`llama`, `qwen2`; top level or a VLM's `text_config`).
import { Fields, describe } from '../formats/config.js';

/** Llama-family decoder-only language model (`llama`, `qwen2`). */
export interface LlamaLikeConfig {
  modelType: 'llama' | 'qwen2';
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** KV heads for grouped-query attention; query heads `k·r … k·r+r−1` share KV head `k`, `r = heads / kvHeads`. */
  numKeyValueHeads: number;
  /** Per-head dimension: `head_dim`, or `hidden_size / num_attention_heads` when absent. */
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** The raw `rope_scaling` object (or non-default transformers-5 `rope_parameters`); null for plain RoPE. */
  ropeScaling: Record<string, unknown> | null;
  tieWordEmbeddings: boolean;
  /** Biases of the attention projections: qwen2 has them on q/k/v only; llama on all four iff `attention_bias`. */
  attentionBias: { qkv: boolean; o: boolean };
  /** Biases on gate/up/down projections (`mlp_bias`; always false for qwen2). */
  mlpBias: boolean;
  hiddenAct: string;
  bosTokenId?: number;
  /** End-of-sequence ids (the config may give one number or a list); empty when none is set. */
  eosTokenId: number[];
  /**
   * Storage dtype name from `dtype` (transformers ≥ 4.56) or `torch_dtype`, e.g. `"bfloat16"`; a llava
   * `text_config`/`vision_config` without one inherits the top-level value.
   */
  torchDtype?: string;
  /** Sliding-window size when `use_sliding_window` is set (qwen2), else null. */
  slidingWindow: number | null;
  /** Attention kind of each layer, from `layer_types` or derived as transformers does (qwen2: sliding from `max_window_layers` on). */
  layerTypes: ('full_attention' | 'sliding_attention')[];
}

/** Head dimension: `head_dim`, or hidden/heads, which must then divide exactly. */
function headDim(f: Fields, hiddenSize: number, heads: number): number {
  const explicit = f.optInt('head_dim', 1);
  if (explicit !== undefined) return explicit;
  if (hiddenSize % heads !== 0) {
    throw f.error('hidden_size', `${hiddenSize} is not divisible by ${f.path('num_attention_heads')} (${heads})`);
  }
  return hiddenSize / heads;
}

/** RoPE base and scaling, from `rope_theta`/`rope_scaling` or transformers-5 `rope_parameters`. */
function rope(f: Fields): { theta: number; scaling: Record<string, unknown> | null } {
  const params = f.optObject('rope_parameters');
  const theta =
    f.obj['rope_theta'] == null && params !== undefined ? f.nested('rope_parameters').positiveOr('rope_theta', 10000) : f.positiveOr('rope_theta', 10000);
  const paramsScaling = params !== undefined && params['rope_type'] != null && params['rope_type'] !== 'default' ? params : null;
  return { theta, scaling: f.optObject('rope_scaling') ?? paramsScaling };
}

/** Parses a `llama` or `qwen2` config (top level or a llava `text_config`). */
export function parseLlamaLike(f: Fields, type: 'llama' | 'qwen2', inheritedDtype: string | undefined): LlamaLikeConfig {
  const isQwen = type === 'qwen2';
  const hiddenSize = f.size('hidden_size');
  const numHiddenLayers = f.size('num_hidden_layers');
  const numAttentionHeads = f.size('num_attention_heads');
  const numKeyValueHeads = f.sizeOr('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw f.error('num_attention_heads', `${numAttentionHeads} is not divisible by ${f.path('num_key_value_heads')} (${numKeyValueHeads})`);
  }
  const { theta, scaling } = rope(f);
  const attentionBias = f.boolOr('attention_bias', false);

  const slidingWindow = isQwen && f.boolOr('use_sliding_window', false) ? f.sizeOr('sliding_window', 4096) : null;
  const maxWindowLayers = f.optInt('max_window_layers', 0) ?? 28;
  const layerTypes =
    parseLayerTypes(f, numHiddenLayers) ??
    Array.from({ length: numHiddenLayers }, (_, i) => (slidingWindow !== null && i >= maxWindowLayers ? 'sliding_attention' : 'full_attention'));

  // LlamaConfig defaults bos/eos to 1/2; Qwen2Config leaves them unset. An explicit null means unset.
  const bosTokenId = isQwen || 'bos_token_id' in f.obj ? f.optInt('bos_token_id', 0) : 1;
  const eosTokenId = isQwen || 'eos_token_id' in f.obj ? f.intList('eos_token_id') : [2];
  return {
    modelType: type,
    hiddenSize,
    intermediateSize: f.size('intermediate_size'),
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim: headDim(f, hiddenSize, numAttentionHeads),
    vocabSize: f.size('vocab_size'),
    maxPositionEmbeddings: f.sizeOr('max_position_embeddings', isQwen ? 32768 : 2048),
    rmsNormEps: f.positiveOr('rms_norm_eps', 1e-6),
    ropeTheta: theta,
    ropeScaling: scaling,
    tieWordEmbeddings: f.boolOr('tie_word_embeddings', false),
    attentionBias: isQwen ? { qkv: true, o: false } : { qkv: attentionBias, o: attentionBias },
    mlpBias: isQwen ? false : f.boolOr('mlp_bias', false),
    hiddenAct: f.activation('hidden_act', 'silu'),
    bosTokenId,
    eosTokenId,
    torchDtype: f.dtype() ?? inheritedDtype,
    slidingWindow,
    layerTypes,
  };
}

/** `layer_types` when given: one entry per layer, each full or sliding attention. */
function parseLayerTypes(f: Fields, numLayers: number): LlamaLikeConfig['layerTypes'] | undefined {
  const v = f.obj['layer_types'];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.length !== numLayers || !v.every((t) => t === 'full_attention' || t === 'sliding_attention')) {
    throw f.error('layer_types', `expected an array of ${numLayers} entries "full_attention" or "sliding_attention", found ${describe(v)}`);
  }
  return v as LlamaLikeConfig['layerTypes'];
}

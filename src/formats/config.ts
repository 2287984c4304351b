/**
 * Parsing and validation of Hugging Face `config.json` files into typed, normalised objects.
 *
 * Supported `model_type`s: `llava` (CLIP vision tower + Llama/Qwen2 language model), `clip_vision_model`,
 * `llama` and `qwen2`. Absent optional fields take the defaults of transformers' config classes; fields
 * that define a model's shape (hidden size, layer count, vocabulary, …) are required. Every problem is a
 * {@link ConfigError} naming the file, the JSON path of the field, and what was expected.
 */
import * as path from 'node:path';
import { InputError } from '../base/errors.js';
import { isFolder, pathExists, readJsonFile } from '../base/files.js';

/** A missing, ill-typed, inconsistent or unsupported setting in a model config. */
export class ConfigError extends InputError {}

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

/** CLIP vision transformer (`clip_vision_model`). */
export interface ClipVisionConfig {
  modelType: 'clip_vision_model';
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  imageSize: number;
  patchSize: number;
  numChannels: number;
  layerNormEps: number;
  hiddenAct: string;
  projectionDim?: number;
  torchDtype?: string;
}

/** LLaVA: vision tower, two-layer MLP projector and language model (`llava`). */
export interface LlavaConfig {
  modelType: 'llava';
  vision: ClipVisionConfig;
  text: LlamaLikeConfig;
  /** Token id of the `<image>` placeholder (`image_token_index`, alias `image_token_id`). */
  imageTokenIndex: number;
  projectorHiddenAct: string;
  /**
   * Which vision hidden states feed the projector, in transformers' convention: an index (or list of indices,
   * concatenated along features) into `hidden_states`, which has L+1 entries (0 = embeddings, i = output of
   * encoder layer i−1); negative values count from the end, so −1 is the last layer and −2 the one before.
   */
  visionFeatureLayer: number | number[];
  /** `visionFeatureLayer` as non-negative indices into the L+1 hidden states (−2 with L = 3 gives [2]). */
  visionFeatureHiddenStateIndices: number[];
  /** `default` drops the CLS token from the selected features; `full` keeps it. */
  visionFeatureSelectStrategy: 'default' | 'full';
  imageSeqLength?: number;
  multimodalProjectorBias: boolean;
  padTokenId?: number;
  torchDtype?: string;
}

export type ModelConfig = LlavaConfig | ClipVisionConfig | LlamaLikeConfig;

/** The `model_type`s {@link parseConfig} accepts. */
export const SUPPORTED_MODEL_TYPES = ['llava', 'clip_vision_model', 'llama', 'qwen2'] as const;

/** Model types that are recognised but that this engine cannot run yet. */
const RECOGNISED_UNSUPPORTED = ['idefics3', 'smolvlm', 'siglip_vision_model', 'idefics3_vision'];

type JsonObject = Record<string, unknown>;

/** The `hidden_act` / `projector_hidden_act` names of transformers' ACT2FN that the engine runs. */
export const HF_ACTIVATIONS = ['silu', 'swish', 'gelu', 'gelu_pytorch_tanh', 'gelu_new', 'gelu_fast', 'quick_gelu'] as const;
export type HfActivation = (typeof HF_ACTIVATIONS)[number];
const isHfActivation = (v: string): v is HfActivation => (HF_ACTIVATIONS as readonly string[]).includes(v);

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing (field is missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  const s = JSON.stringify(v);
  return `${typeof v} ${s.length > 40 ? `${s.slice(0, 37)}...` : s}`;
}

/**
 * Typed access to the fields of one JSON object of a config, producing {@link ConfigError}s that name the file
 * and the field's JSON path. A `null` value counts as absent, as transformers treats `None`.
 */
class Fields {
  constructor(readonly obj: JsonObject, readonly source: string, readonly prefix: string) {}

  /** JSON path of `key` within the file, e.g. `text_config.hidden_size`. */
  path(key: string): string {
    return this.prefix === '' ? key : `${this.prefix}.${key}`;
  }

  error(key: string, message: string): ConfigError {
    return new ConfigError(`${this.source}: ${this.path(key)}: ${message}`);
  }

  private raw(key: string): unknown {
    const v = this.obj[key];
    return v === null ? undefined : v;
  }

  private wrongType(key: string, expected: string): ConfigError {
    return this.error(key, `expected ${expected}, found ${describe(this.obj[key])}`);
  }

  /** An integer ≥ `min` (0 for ids, 1 for sizes), or `undefined` when absent. */
  optInt(key: string, min: 0 | 1): number | undefined {
    const v = this.raw(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      throw this.wrongType(key, min === 0 ? 'a non-negative integer' : 'a positive integer');
    }
    return v;
  }

  /** A required positive integer. */
  size(key: string): number {
    const v = this.optInt(key, 1);
    if (v === undefined) throw this.wrongType(key, 'a positive integer');
    return v;
  }

  /** A positive integer, `dflt` when absent. */
  sizeOr(key: string, dflt: number): number {
    return this.optInt(key, 1) ?? dflt;
  }

  /** A finite positive number, `dflt` when absent. */
  positiveOr(key: string, dflt: number): number {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw this.wrongType(key, 'a positive number');
    return v;
  }

  boolOr(key: string, dflt: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') throw this.wrongType(key, 'true or false');
    return v;
  }

  optString(key: string): string | undefined {
    const v = this.raw(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') throw this.wrongType(key, 'a non-empty string');
    return v;
  }

  stringOr(key: string, dflt: string): string {
    return this.optString(key) ?? dflt;
  }

  /** An activation name transformers knows and the engine runs (HF_ACTIVATIONS), `dflt` when absent. */
  activation(key: string, dflt: string): string {
    const v = this.stringOr(key, dflt);
    if (!isHfActivation(v)) throw this.error(key, `activation "${v}" is not supported (supported: ${HF_ACTIVATIONS.join(', ')})`);
    return v;
  }

  /** An object, or `undefined` when absent. */
  optObject(key: string): JsonObject | undefined {
    const v = this.raw(key);
    if (v === undefined) return undefined;
    if (!isObject(v)) throw this.wrongType(key, 'an object');
    return v;
  }

  /** Fields of the nested object at `key` (required). */
  nested(key: string): Fields {
    const v = this.optObject(key);
    if (v === undefined) throw this.wrongType(key, 'an object');
    return new Fields(v, this.source, this.path(key));
  }

  /** A non-negative integer or list of them (token ids); `[]` when absent. */
  intList(key: string): number[] {
    const v = this.raw(key);
    if (v === undefined) return [];
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
      throw this.wrongType(key, 'a non-negative integer or an array of them');
    }
    return list as number[];
  }

  /** Storage dtype from `dtype` or the older `torch_dtype`. */
  dtype(): string | undefined {
    return this.optString('dtype') ?? this.optString('torch_dtype');
  }

  /** `model_type`, or `dflt` when absent. */
  modelType(dflt?: string): string {
    const t = this.optString('model_type') ?? dflt;
    if (t === undefined) throw this.wrongType('model_type', 'a string naming the model type');
    return t;
  }
}

function unsupportedModelType(f: Fields, type: string, allowed: readonly string[]): ConfigError {
  const known = RECOGNISED_UNSUPPORTED.includes(type) ? ' (recognised, but not supported yet)' : '';
  return f.error('model_type', `"${type}" is not supported${known}; supported here: ${allowed.join(', ')}`);
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
  const theta = f.obj['rope_theta'] == null && params !== undefined
    ? f.nested('rope_parameters').positiveOr('rope_theta', 10000)
    : f.positiveOr('rope_theta', 10000);
  const paramsScaling = params !== undefined && params['rope_type'] != null && params['rope_type'] !== 'default'
    ? params : null;
  return { theta, scaling: f.optObject('rope_scaling') ?? paramsScaling };
}

/** Parses a `llama` or `qwen2` config (top level or a llava `text_config`). */
function parseLlamaLike(f: Fields, type: 'llama' | 'qwen2', inheritedDtype: string | undefined): LlamaLikeConfig {
  const isQwen = type === 'qwen2';
  const hiddenSize = f.size('hidden_size');
  const numHiddenLayers = f.size('num_hidden_layers');
  const numAttentionHeads = f.size('num_attention_heads');
  const numKeyValueHeads = f.sizeOr('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw f.error('num_attention_heads',
      `${numAttentionHeads} is not divisible by ${f.path('num_key_value_heads')} (${numKeyValueHeads})`);
  }
  const { theta, scaling } = rope(f);
  const attentionBias = f.boolOr('attention_bias', false);

  const slidingWindow = isQwen && f.boolOr('use_sliding_window', false) ? f.sizeOr('sliding_window', 4096) : null;
  const maxWindowLayers = f.optInt('max_window_layers', 0) ?? 28;
  const layerTypes = parseLayerTypes(f, numHiddenLayers) ?? Array.from({ length: numHiddenLayers },
    (_, i) => (slidingWindow !== null && i >= maxWindowLayers ? 'sliding_attention' : 'full_attention'));

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
  if (!Array.isArray(v) || v.length !== numLayers ||
    !v.every((t) => t === 'full_attention' || t === 'sliding_attention')) {
    throw f.error('layer_types',
      `expected an array of ${numLayers} entries "full_attention" or "sliding_attention", found ${describe(v)}`);
  }
  return v as LlamaLikeConfig['layerTypes'];
}

/** Parses a `clip_vision_model` config (top level or a llava `vision_config`). */
function parseClipVision(f: Fields, inheritedDtype: string | undefined): ClipVisionConfig {
  const hiddenSize = f.size('hidden_size');
  const numAttentionHeads = f.size('num_attention_heads');
  if (hiddenSize % numAttentionHeads !== 0) {
    throw f.error('hidden_size', `${hiddenSize} is not divisible by ${f.path('num_attention_heads')} (${numAttentionHeads})`);
  }
  const imageSize = f.size('image_size'), patchSize = f.size('patch_size');
  if (imageSize % patchSize !== 0) throw f.error('image_size', `${imageSize} is not a multiple of ${f.path('patch_size')} (${patchSize})`);
  return {
    modelType: 'clip_vision_model',
    hiddenSize,
    intermediateSize: f.size('intermediate_size'),
    numHiddenLayers: f.size('num_hidden_layers'),
    numAttentionHeads,
    imageSize,
    patchSize,
    numChannels: f.sizeOr('num_channels', 3),
    layerNormEps: f.positiveOr('layer_norm_eps', 1e-5),
    hiddenAct: f.activation('hidden_act', 'quick_gelu'),
    projectionDim: f.optInt('projection_dim', 1),
    torchDtype: f.dtype() ?? inheritedDtype,
  };
}

/** `vision_feature_layer` (default −2), checked against the L+1 vision hidden states. */
function parseFeatureLayer(f: Fields, numLayers: number): { raw: number | number[]; indices: number[] } {
  const v = f.obj['vision_feature_layer'] ?? -2;
  const list = Array.isArray(v) ? v : [v];
  const states = numLayers + 1;
  if (list.length === 0 || !list.every((x) => typeof x === 'number' && Number.isSafeInteger(x))) {
    throw f.error('vision_feature_layer', `expected an integer or a non-empty array of integers, found ${describe(v)}`);
  }
  const indices = (list as number[]).map((x) => {
    if (x < -states || x >= states) {
      throw f.error('vision_feature_layer', `${x} is outside [${-states}, ${states - 1}]: ` +
        `the vision tower has ${numLayers} layers, so ${states} hidden states (index 0 = embeddings)`);
    }
    return x < 0 ? x + states : x;
  });
  return { raw: v as number | number[], indices };
}

/** Parses a `llava` config with its nested `vision_config` and `text_config`. */
function parseLlava(f: Fields): LlavaConfig {
  const dtype = f.dtype();
  const vf = f.nested('vision_config');
  const visionType = vf.modelType('clip_vision_model');
  if (visionType !== 'clip_vision_model') throw unsupportedModelType(vf, visionType, ['clip_vision_model']);
  const vision = parseClipVision(vf, dtype);

  const tf = f.nested('text_config');
  const textType = tf.modelType('llama');
  if (textType !== 'llama' && textType !== 'qwen2') throw unsupportedModelType(tf, textType, ['llama', 'qwen2']);
  const text = parseLlamaLike(tf, textType, dtype);

  const strategy = f.stringOr('vision_feature_select_strategy', 'default');
  if (strategy !== 'default' && strategy !== 'full') {
    throw f.error('vision_feature_select_strategy', `expected "default" or "full", found "${strategy}"`);
  }
  const featureLayer = parseFeatureLayer(f, vision.numHiddenLayers);
  const imageTokenKey = f.obj['image_token_index'] == null && f.obj['image_token_id'] != null
    ? 'image_token_id' : 'image_token_index';
  return {
    modelType: 'llava',
    vision,
    text,
    imageTokenIndex: f.optInt(imageTokenKey, 0) ?? 32000,
    projectorHiddenAct: f.activation('projector_hidden_act', 'gelu'),
    visionFeatureLayer: featureLayer.raw,
    visionFeatureHiddenStateIndices: featureLayer.indices,
    visionFeatureSelectStrategy: strategy,
    imageSeqLength: f.optInt('image_seq_length', 1),
    multimodalProjectorBias: f.boolOr('multimodal_projector_bias', true),
    padTokenId: f.optInt('pad_token_id', 0),
    torchDtype: dtype,
  };
}

/**
 * Validates a parsed `config.json` and normalises it. `source` (normally the file path) prefixes every
 * error message. Throws a {@link ConfigError} for unsupported model types and bad or inconsistent fields.
 */
export function parseConfig(json: unknown, source: string): ModelConfig {
  if (!isObject(json)) throw new ConfigError(`${source}: expected a JSON object, found ${describe(json)}`);
  const f = new Fields(json, source, '');
  const type = f.modelType();
  switch (type) {
    case 'llava': return parseLlava(f);
    case 'clip_vision_model': return parseClipVision(f, undefined);
    case 'llama':
    case 'qwen2': return parseLlamaLike(f, type, undefined);
    default: throw unsupportedModelType(f, type, SUPPORTED_MODEL_TYPES);
  }
}

/** Reads and parses `dir/config.json`; see {@link parseConfig}. */
export function loadConfig(dir: string): ModelConfig {
  if (!isFolder(dir)) throw new ConfigError(`${dir}: ${pathExists(dir) ? 'is not a folder' : 'no such folder'} (a model folder holds config.json and the weights)`);
  const file = path.join(dir, 'config.json');
  return parseConfig(readJsonFile(file, { what: 'model config', error: ConfigError }), file);
}

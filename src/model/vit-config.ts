// The configs of the vision transformers: CLIP (`clip_vision_model`) and SigLIP (`siglip_vision_model`,
// and Idefics3's `idefics3_vision`, the same network), top level or a VLM's `vision_config`.
import { Fields } from '../formats/config.js';

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

/** Parses a `clip_vision_model` config (top level or a llava `vision_config`). */
export function parseClipVision(f: Fields, inheritedDtype: string | undefined): ClipVisionConfig {
  const hiddenSize = f.size('hidden_size');
  const numAttentionHeads = f.size('num_attention_heads');
  if (hiddenSize % numAttentionHeads !== 0) {
    throw f.error('hidden_size', `${hiddenSize} is not divisible by ${f.path('num_attention_heads')} (${numAttentionHeads})`);
  }
  const imageSize = f.size('image_size'),
    patchSize = f.size('patch_size');
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

/** SigLIP vision transformer (`siglip_vision_model`, `idefics3_vision`): no class token, no pre-norm, a patch bias. */
export interface SiglipVisionConfig {
  modelType: 'siglip_vision_model' | 'idefics3_vision';
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** The tile's side in pixels; the patch grid is floor(imageSize / patchSize) (a remainder is never seen, as in siglip-so400m-patch14-384). */
  imageSize: number;
  patchSize: number;
  numChannels: number;
  layerNormEps: number;
  hiddenAct: string;
  torchDtype?: string;
}

export type VitConfig = ClipVisionConfig | SiglipVisionConfig;

/** Parses a SigLIP-style vision config (top level or a VLM's `vision_config`). */
export function parseSiglipVision(f: Fields, type: SiglipVisionConfig['modelType'], inheritedDtype: string | undefined): SiglipVisionConfig {
  const hiddenSize = f.size('hidden_size');
  const numAttentionHeads = f.size('num_attention_heads');
  if (hiddenSize % numAttentionHeads !== 0) {
    throw f.error('hidden_size', `${hiddenSize} is not divisible by ${f.path('num_attention_heads')} (${numAttentionHeads})`);
  }
  const imageSize = f.size('image_size'),
    patchSize = f.size('patch_size');
  if (patchSize > imageSize) throw f.error('patch_size', `${patchSize} is larger than ${f.path('image_size')} (${imageSize})`);
  return {
    modelType: type,
    hiddenSize,
    intermediateSize: f.size('intermediate_size'),
    numHiddenLayers: f.size('num_hidden_layers'),
    numAttentionHeads,
    imageSize,
    patchSize,
    numChannels: f.sizeOr('num_channels', 3),
    layerNormEps: f.positiveOr('layer_norm_eps', 1e-6),
    hiddenAct: f.activation('hidden_act', 'gelu_pytorch_tanh'),
    torchDtype: f.dtype() ?? inheritedDtype,
  };
}

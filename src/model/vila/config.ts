// The config of a VILA1.5 checkpoint (NVlabs/VILA `LlavaLlamaModel`, `model_type` "llava_llama"): the
// top-level config.json holds copies of its parts' configs (`llm_cfg`, `vision_tower_cfg`,
// `mm_projector_cfg`), whose weights are in the folders `llm/`, `vision_tower/` and `mm_projector/`.
import { Fields, unsupportedType } from '../../formats/config.js';
import { FamilyConfig, TextFacts } from '../family.js';
import { LlamaLikeConfig, parseLlamaLike } from '../llama-config.js';
import { SiglipVisionConfig, parseSiglipVision } from '../vit-config.js';

/** Projector types of VILA's `MultimodalProjector` the engine runs. */
export const VILA_PROJECTORS = ['mlp_downsample', 'mlp_downsample_3x3_fix', 'mlp2x_gelu', 'linear'] as const;
export type VilaProjector = (typeof VILA_PROJECTORS)[number];

/** VILA's IMAGE_TOKEN_INDEX: the id its prompts use for image rows (not a vocabulary id). */
export const VILA_IMAGE_TOKEN_INDEX = -200;

export interface VilaConfig extends FamilyConfig {
  modelType: 'llava_llama';
  vision: SiglipVisionConfig;
  text: LlamaLikeConfig;
  projector: VilaProjector;
  /** `mm_vision_select_layer`: the vision hidden state the projector reads (negative: from the end). */
  selectLayer: number;
  /** That hidden state as an index into the L+1 hidden states. */
  selectHiddenState: number;
  /** `mm_vision_select_feature`: "cls_patch" keeps every token; "patch" drops the first (for SigLIP, a patch). */
  selectFeature: 'cls_patch' | 'patch';
  /** `image_aspect_ratio`: "resize" squashes the image to the tower's size; "pad" pads it to a square with the mean colour first. */
  imageAspectRatio: 'resize' | 'pad';
  torchDtype?: string;
  textFacts: TextFacts;
  imageFacts: NonNullable<FamilyConfig['imageFacts']>;
}

/** Tokens VILA's projector gives for a grid of g × g patches (2×2 or 3×3 blocks after zero padding). */
export function vilaTokens(projector: VilaProjector, g: number): number {
  if (projector === 'mlp_downsample') return Math.ceil(g / 2) ** 2;
  if (projector === 'mlp_downsample_3x3_fix') return Math.ceil(g / 3) ** 2;
  return g * g;
}

export function parseVila(f: Fields): VilaConfig {
  const dtype = f.dtype();
  const vf = f.nested('vision_tower_cfg');
  const visionType = vf.modelType('siglip_vision_model');
  if (visionType !== 'siglip_vision_model')
    throw unsupportedType(vf, 'model_type', visionType, ['siglip_vision_model'], ['clip_vision_model', 'intern_vit_6b']);
  const vision = parseSiglipVision(vf, 'siglip_vision_model', dtype);
  const tf = f.nested('llm_cfg');
  const textType = tf.modelType('llama');
  if (textType !== 'llama' && textType !== 'qwen2') throw unsupportedType(tf, 'model_type', textType, ['llama', 'qwen2']);
  const text = parseLlamaLike(tf, textType, dtype);
  const pf = f.nested('mm_projector_cfg');
  const projector = pf.stringOr('mm_projector_type', 'linear');
  if (!(VILA_PROJECTORS as readonly string[]).includes(projector)) throw unsupportedType(pf, 'mm_projector_type', projector, VILA_PROJECTORS);
  const states = vision.numHiddenLayers + 1;
  const selectLayer = f.obj['mm_vision_select_layer'] ?? -2;
  if (typeof selectLayer !== 'number' || !Number.isSafeInteger(selectLayer) || selectLayer < -states + 1 || selectLayer >= states || selectLayer === 0) {
    throw f.error(
      'mm_vision_select_layer',
      `expected an integer in [${-states + 1}, ${states - 1}] other than 0 (the tower has ${vision.numHiddenLayers} layers), found ${JSON.stringify(selectLayer)}`,
    );
  }
  const selectFeature = f.stringOr('mm_vision_select_feature', 'patch');
  if (selectFeature !== 'cls_patch' && selectFeature !== 'patch')
    throw f.error('mm_vision_select_feature', `expected "cls_patch" or "patch", found "${selectFeature}"`);
  const aspect = f.stringOr('image_aspect_ratio', 'resize');
  if (aspect !== 'resize' && aspect !== 'pad') throw f.error('image_aspect_ratio', `"${aspect}" is not supported (supported: resize, pad)`);
  for (const key of ['s2', 'mm_use_im_start_end']) {
    if (f.boolOr(key, false)) throw f.error(key, 'true is not supported (VILA1.5 checkpoints leave it false)');
  }
  if (selectFeature === 'patch' && projector.startsWith('mlp_downsample')) {
    throw f.error(
      'mm_vision_select_feature',
      `"patch" drops the first SigLIP token (a patch: SigLIP has no class token), and ${projector} cannot lay the rest out as a square grid; VILA1.5 uses "cls_patch"`,
    );
  }
  const g = Math.floor(vision.imageSize / vision.patchSize);
  const tokens = vilaTokens(projector as VilaProjector, g) - (selectFeature === 'patch' ? 1 : 0);
  return {
    modelType: 'llava_llama',
    vision,
    text,
    projector: projector as VilaProjector,
    selectLayer,
    selectHiddenState: selectLayer < 0 ? selectLayer + states : selectLayer,
    selectFeature,
    imageAspectRatio: aspect,
    torchDtype: dtype,
    textFacts: {
      vocabSize: text.vocabSize,
      contextWindow: text.maxPositionEmbeddings,
      eosTokenIds: text.eosTokenId,
      contextField: 'llm_cfg.max_position_embeddings',
    },
    imageFacts: { tokenId: VILA_IMAGE_TOKEN_INDEX, tokenField: "VILA's IMAGE_TOKEN_INDEX", minTokens: tokens },
  };
}

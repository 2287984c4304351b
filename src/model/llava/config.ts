// The config of a LLaVA checkpoint (`llava`): a CLIP vision_config, a Llama/Qwen2 text_config and the
// projector's settings.
import { Fields, describe, unsupportedType } from '../../formats/config.js';
import { ClipVisionConfig, parseClipVision } from '../vit-config.js';
import { LlamaLikeConfig, parseLlamaLike } from '../llama-config.js';
import { FamilyConfig, TextFacts } from '../family.js';

/** LLaVA: vision tower, two-layer MLP projector and language model (`llava`). */
export interface LlavaConfig extends FamilyConfig {
  /** `llava`, or `llava_next` for a LLaVA-NeXT config (which adds its own fields, see llava-next/config.ts). */
  modelType: 'llava' | 'llava_next';
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
  textFacts: TextFacts;
  imageFacts: NonNullable<FamilyConfig['imageFacts']>;
}

/** `vision_feature_layer` (default −2), checked against the L+1 vision hidden states. */
export function parseFeatureLayer(f: Fields, numLayers: number): { raw: number | number[]; indices: number[] } {
  const v = f.obj['vision_feature_layer'] ?? -2;
  const list = Array.isArray(v) ? v : [v];
  const states = numLayers + 1;
  if (list.length === 0 || !list.every((x) => typeof x === 'number' && Number.isSafeInteger(x))) {
    throw f.error('vision_feature_layer', `expected an integer or a non-empty array of integers, found ${describe(v)}`);
  }
  const indices = (list as number[]).map((x) => {
    if (x < -states || x >= states) {
      throw f.error(
        'vision_feature_layer',
        `${x} is outside [${-states}, ${states - 1}]: ` + `the vision tower has ${numLayers} layers, so ${states} hidden states (index 0 = embeddings)`,
      );
    }
    return x < 0 ? x + states : x;
  });
  return { raw: v as number | number[], indices };
}

/** Parses a `llava` config with its nested `vision_config` and `text_config`. */
export function parseLlava(f: Fields, modelType: LlavaConfig['modelType'] = 'llava'): LlavaConfig {
  const dtype = f.dtype();
  const vf = f.nested('vision_config');
  const visionType = vf.modelType('clip_vision_model');
  if (visionType !== 'clip_vision_model') throw unsupportedType(vf, 'model_type', visionType, ['clip_vision_model'], ['siglip_vision_model']);
  const vision = parseClipVision(vf, dtype);

  const tf = f.nested('text_config');
  const textType = tf.modelType('llama');
  if (textType !== 'llama' && textType !== 'qwen2') throw unsupportedType(tf, 'model_type', textType, ['llama', 'qwen2']);
  const text = parseLlamaLike(tf, textType, dtype);

  const strategy = f.stringOr('vision_feature_select_strategy', 'default');
  if (strategy !== 'default' && strategy !== 'full') {
    throw f.error('vision_feature_select_strategy', `expected "default" or "full", found "${strategy}"`);
  }
  const featureLayer = parseFeatureLayer(f, vision.numHiddenLayers);
  const imageTokenKey = f.obj['image_token_index'] == null && f.obj['image_token_id'] != null ? 'image_token_id' : 'image_token_index';
  const imageTokenIndex = f.optInt(imageTokenKey, 0) ?? 32000;
  const grid = vision.imageSize / vision.patchSize;
  return {
    modelType,
    vision,
    text,
    imageTokenIndex,
    projectorHiddenAct: f.activation('projector_hidden_act', 'gelu'),
    visionFeatureLayer: featureLayer.raw,
    visionFeatureHiddenStateIndices: featureLayer.indices,
    visionFeatureSelectStrategy: strategy,
    imageSeqLength: f.optInt('image_seq_length', 1),
    multimodalProjectorBias: f.boolOr('multimodal_projector_bias', true),
    padTokenId: f.optInt('pad_token_id', 0),
    torchDtype: dtype,
    textFacts: {
      vocabSize: text.vocabSize,
      contextWindow: text.maxPositionEmbeddings,
      eosTokenIds: text.eosTokenId,
      contextField: 'text_config.max_position_embeddings',
    },
    imageFacts: { tokenId: imageTokenIndex, tokenField: imageTokenKey, minTokens: grid * grid + (strategy === 'full' ? 1 : 0) },
  };
}

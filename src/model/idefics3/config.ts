// The config of an Idefics3 checkpoint (`idefics3`: SmolVLM, Idefics3): a SigLIP-style
// `vision_config` (`idefics3_vision`), a Llama `text_config`, the pixel-shuffle `scale_factor`.
import { Fields, unsupportedType } from '../../formats/config.js';
import { FamilyConfig, TextFacts } from '../family.js';
import { LlamaLikeConfig, parseLlamaLike } from '../llama-config.js';
import { SiglipVisionConfig, parseSiglipVision } from '../vit-config.js';

export interface Idefics3Config extends FamilyConfig {
  /** `idefics3`, or `smolvlm` (SmolVLMForConditionalGeneration, the same model). */
  modelType: 'idefics3' | 'smolvlm';
  vision: SiglipVisionConfig;
  text: LlamaLikeConfig;
  /** The connector's pixel shuffle merges scale × scale patches into one token. */
  scaleFactor: number;
  /** `image_token_id`: the `<image>` token. */
  imageTokenId: number;
  tieWordEmbeddings: boolean;
  torchDtype?: string;
  textFacts: TextFacts;
  imageFacts: NonNullable<FamilyConfig['imageFacts']>;
}

export function parseIdefics3(f: Fields): Idefics3Config {
  const modelType = f.modelType() === 'smolvlm' ? 'smolvlm' : 'idefics3';
  const dtype = f.dtype();
  const vf = f.nested('vision_config');
  const visionType = vf.modelType('idefics3_vision');
  const visionTypes = ['idefics3_vision', 'smolvlm_vision', 'siglip_vision_model'];
  if (!visionTypes.includes(visionType)) throw unsupportedType(vf, 'model_type', visionType, visionTypes);
  const vision = parseSiglipVision(vf, 'idefics3_vision', dtype);
  const tf = f.nested('text_config');
  const textType = tf.modelType('llama');
  if (textType !== 'llama' && textType !== 'qwen2') throw unsupportedType(tf, 'model_type', textType, ['llama', 'qwen2']);
  const text = parseLlamaLike(tf, textType, dtype);
  const scaleFactor = f.sizeOr('scale_factor', 2);
  const grid = Math.floor(vision.imageSize / vision.patchSize);
  if (grid % scaleFactor !== 0) {
    throw f.error(
      'scale_factor',
      `${scaleFactor} does not divide the tile's ${grid}×${grid} patch grid (vision_config.image_size ${vision.imageSize} / patch_size ${vision.patchSize})`,
    );
  }
  const imageTokenId = f.optInt('image_token_id', 0) ?? 128257;
  const perTile = (grid / scaleFactor) ** 2;
  return {
    modelType,
    vision,
    text,
    scaleFactor,
    imageTokenId,
    tieWordEmbeddings: f.boolOr('tie_word_embeddings', false),
    torchDtype: dtype,
    textFacts: {
      vocabSize: text.vocabSize,
      contextWindow: text.maxPositionEmbeddings,
      eosTokenIds: text.eosTokenId,
      contextField: 'text_config.max_position_embeddings',
    },
    imageFacts: { tokenId: imageTokenId, tokenField: 'image_token_id', minTokens: perTile },
  };
}

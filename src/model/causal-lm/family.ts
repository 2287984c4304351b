// Text-only decoders (LlamaForCausalLM, Qwen2ForCausalLM): the language model alone, tensors under
// `model.`, an `lm_head` unless the embeddings are tied.
import { Fields } from '../../formats/config.js';
import { Family, FamilyConfig, familyRow } from '../family.js';
import { LlamaDecoder } from '../llama.js';
import { LlamaLikeConfig, parseLlamaLike } from '../llama-config.js';

export type CausalLmConfig = LlamaLikeConfig & FamilyConfig;

export const causalLm: Family<CausalLmConfig> = {
  name: 'causal-lm',
  architectures: ['LlamaForCausalLM', 'Qwen2ForCausalLM'],
  modelTypes: ['llama', 'qwen2'],
  parse: (json, source) => {
    const f = new Fields(json, source, '');
    const c = parseLlamaLike(f, f.modelType() === 'qwen2' ? 'qwen2' : 'llama', undefined);
    return {
      ...c,
      textFacts: { vocabSize: c.vocabSize, contextWindow: c.maxPositionEmbeddings, eosTokenIds: c.eosTokenId, contextField: 'max_position_embeddings' },
      imageFacts: null,
    };
  },
  describe: (c) => ({
    family: `${c.modelType}: text-only decoder`,
    parts: [
      `language:     ${c.modelType} ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads / ${c.numKeyValueHeads} KV heads, vocab ${c.vocabSize}, context ${c.maxPositionEmbeddings}`,
    ],
  }),
  load: async (loader, c, placement) => {
    const lmHead = loader.has('lm_head.weight') ? 'lm_head.weight' : null;
    return { decoder: await LlamaDecoder.load(loader, c, { prefix: 'model.', lmHead }, placement), encoder: null };
  },
};

export default familyRow(causalLm);

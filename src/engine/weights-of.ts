// Which model a config describes, loaded from a checkpoint through a WeightLoader: a llava (CLIP
// tower, projector, Llama/Qwen2 decoder) or a text-only Llama/Qwen2. The same call serves a real
// load and inspect's check on a MetaBackend. After it, every tensor of the checkpoint must be used.
import { ConfigError, ModelConfig } from '../formats/config.js';
import { LlavaModel } from '../model/llava.js';
import { LlamaDecoder, PlacementOptions } from '../model/llama.js';
import { WeightLoader } from '../model/weights.js';

export interface LoadedWeights { decoder: LlamaDecoder; llava: LlavaModel | null }

export async function loadWeights(loader: WeightLoader, config: ModelConfig, tensorNames: readonly string[], placement: PlacementOptions = {}): Promise<LoadedWeights> {
  let out: LoadedWeights;
  if (config.modelType === 'llava') {
    const llava = await LlavaModel.load(loader, config, placement);
    out = { decoder: llava.language, llava };
  } else if (config.modelType === 'llama' || config.modelType === 'qwen2') {
    const lmHead = loader.has('lm_head.weight') ? 'lm_head.weight' : null;
    out = { decoder: await LlamaDecoder.load(loader, config, { prefix: 'model.', lmHead }, placement), llava: null };
  } else {
    throw new ConfigError(`${loader.label}: model_type "${config.modelType}" is a vision encoder alone; load a llava checkpoint that contains it`);
  }
  loader.checkAllUsed(tensorNames);
  return out;
}

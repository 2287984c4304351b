// Loading a model's weights through a WeightLoader, by its family's row. The same call serves a real
// load and inspect's check on a MetaBackend. After it, every tensor of the checkpoint must be used.
import path from 'node:path';
import { ConfigError } from '../formats/config.js';
import { Checkpoint } from '../formats/checkpoint.js';
import { AnyFamily, FamilyConfig, FamilyModel } from '../model/family.js';
import { PlacementOptions } from '../model/decoder.js';
import { WeightLoader } from '../model/weights.js';

export async function loadWeights(
  loader: WeightLoader,
  family: AnyFamily,
  config: FamilyConfig,
  tensorNames: readonly string[],
  placement: PlacementOptions = {},
): Promise<FamilyModel> {
  if (family.notRunnable) throw new ConfigError(`${loader.label}: model_type "${config.modelType}" ${family.notRunnable}`);
  const out = await family.load(loader, config, placement);
  loader.checkAllUsed(tensorNames);
  return out;
}

/** The checkpoint of a model folder: its safetensors, or the family's weight folders (each with its prefix). */
export function openWeights(dir: string, family: AnyFamily | undefined, config: FamilyConfig | undefined): Checkpoint {
  const parts = family && config ? family.weightFolders?.(config) : undefined;
  return parts ? Checkpoint.openParts(dir, parts) : Checkpoint.open(dir);
}

/** The folder of a model's tokenizer, chat template and generation config. */
export function textFolderOf(dir: string, family: AnyFamily | undefined, config: FamilyConfig | undefined): string {
  const sub = family && config ? family.textFolder?.(config) : undefined;
  return sub ? path.join(dir, sub) : dir;
}

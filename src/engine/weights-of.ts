// Loading a model's weights through a WeightLoader, by its family's row. The same call serves a real
// load and inspect's check on a MetaBackend. After it, every tensor of the checkpoint must be used.
import { ConfigError } from '../formats/config.js';
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

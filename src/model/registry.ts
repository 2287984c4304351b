// The model families the engine runs, one row each (as vLLM's model registry and llama.cpp's
// one-file-per-architecture): a config.json's `architectures` (or, when none matches, its
// `model_type`) picks the row. Adding a family is adding its folder and one line here.
import { ConfigError, Fields, JsonObject, describe, isObject, readConfigJson, unsupportedType } from '../formats/config.js';
import { AnyFamily, FamilyConfig } from './family.js';
import causalLm from './causal-lm/family.js';
import llava from './llava/family.js';
import llavaNext from './llava-next/family.js';
import vila from './vila/family.js';
import idefics3 from './idefics3/family.js';
import { clipTowerRow, siglipTowerRow } from './vision-tower/family.js';

// One row per line (prettier-ignore keeps it so).
// prettier-ignore
export const FAMILIES: readonly AnyFamily[] = [
  llava,
  clipTowerRow,
  causalLm,
  siglipTowerRow,
  llavaNext,
  vila,
  idefics3,
];

/** Model types of families still to come: named as such in the error. */
const RECOGNISED_UNSUPPORTED: string[] = [];

/** Every `model_type` the registry accepts. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = FAMILIES.flatMap((f) => f.modelTypes);

/** A config.json parsed by its family's row. */
export interface ParsedConfig {
  family: AnyFamily;
  config: FamilyConfig;
}

/** The family of a config.json: the first `architectures` entry a row lists, else its `model_type`. */
export function familyOf(json: JsonObject, source: string): AnyFamily {
  const f = new Fields(json, source, '');
  const archs = Array.isArray(json['architectures']) ? json['architectures'].filter((a): a is string => typeof a === 'string') : [];
  const type = f.modelType();
  for (const a of archs) {
    const row = FAMILIES.find((r) => r.architectures.includes(a));
    if (row && row.modelTypes.includes(type)) return row;
  }
  const row = FAMILIES.find((r) => r.modelTypes.includes(type));
  if (!row) {
    const listed = archs.length
      ? ` (architectures ${archs.join(', ')} ${archs.length === 1 ? 'is' : 'are'} not one of ${FAMILIES.flatMap((r) => r.architectures).join(', ')})`
      : '';
    throw unsupportedType(f, 'model_type', type, SUPPORTED_MODEL_TYPES, RECOGNISED_UNSUPPORTED, listed);
  }
  return row;
}

/**
 * Validates a parsed `config.json` with its family's parser. `source` (normally the file path)
 * prefixes every error message: an unknown type lists the supported ones.
 */
export function parseConfig(json: unknown, source: string): ParsedConfig {
  if (!isObject(json)) throw new ConfigError(`${source}: expected a JSON object, found ${describe(json)}`);
  const family = familyOf(json, source);
  return { family, config: family.parse(json, source) };
}

/** Reads and parses `dir/config.json`; see {@link parseConfig}. */
export function loadConfig(dir: string): ParsedConfig {
  const { json, file } = readConfigJson(dir);
  return parseConfig(json, file);
}

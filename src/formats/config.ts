/**
 * Parsing and validation of Hugging Face `config.json` files into typed, normalised objects.
 *
 * The shared part: typed access to fields (`Fields`) with errors that name the file, the JSON path of the
 * field and what was expected. Each family parses its own config beside its model (`src/model/`), with
 * transformers' defaults for absent optional fields; fields that define a model's shape are required.
 */
import * as path from 'node:path';
import { InputError } from '../base/errors.js';
import { isFolder, pathExists, readJsonFile } from '../base/files.js';

/** A missing, ill-typed, inconsistent or unsupported setting in a model config. */
export class ConfigError extends InputError {}

export type JsonObject = Record<string, unknown>;

/** The `hidden_act` / `projector_hidden_act` names of transformers' ACT2FN that the engine runs. */
export const HF_ACTIVATIONS = ['silu', 'swish', 'gelu', 'gelu_pytorch_tanh', 'gelu_new', 'gelu_fast', 'quick_gelu'] as const;
export type HfActivation = (typeof HF_ACTIVATIONS)[number];
export const isHfActivation = (v: string): v is HfActivation => (HF_ACTIVATIONS as readonly string[]).includes(v);

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function describe(v: unknown): string {
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
export class Fields {
  constructor(
    readonly obj: JsonObject,
    readonly source: string,
    readonly prefix: string,
  ) {}

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

/** Reads `dir/config.json` as a JSON object (ConfigError naming the folder or file otherwise). */
export function readConfigJson(dir: string): { json: JsonObject; file: string } {
  if (!isFolder(dir))
    throw new ConfigError(`${dir}: ${pathExists(dir) ? 'is not a folder' : 'no such folder'} (a model folder holds config.json and the weights)`);
  const file = path.join(dir, 'config.json');
  const json = readJsonFile(file, { what: 'model config', error: ConfigError });
  if (!isObject(json)) throw new ConfigError(`${file}: expected a JSON object, found ${describe(json)}`);
  return { json, file };
}

/** The error for a `model_type` (or other type field) the engine does not run, listing what it runs. */
export function unsupportedType(f: Fields, key: string, type: string, allowed: readonly string[], recognised: readonly string[] = [], more = ''): ConfigError {
  const known = recognised.includes(type) ? ' (recognised, but not supported yet)' : '';
  return f.error(key, `"${type}" is not supported${known}; supported here: ${allowed.join(', ')}${more}`);
}

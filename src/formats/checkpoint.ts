// A model's weights as one tensor source: a single safetensors file, shards listed by an index,
// several folders of one model (VILA), or a PyTorch `.pt` state dict (TinyChat's AWQ checkpoints).
import fs from 'node:fs';
import path from 'node:path';
import { readJsonFile } from '../base/files.js';
import { SafetensorsError, SafetensorsFile, TensorInfo, TensorSource, WeightFile } from './safetensors.js';
import { TorchPtFile } from './torch-pt.js';
import { describe, isPlainObject } from './json-values.js';
/** Options for {@link Checkpoint.open}. */
export interface CheckpointOptions {
  /** Name of the shard index inside a folder (default `model.safetensors.index.json`). */
  indexName?: string;
}

const SINGLE_FILE_NAME = 'model.safetensors';
const DEFAULT_INDEX_NAME = 'model.safetensors.index.json';

/**
 * The weights of a whole model: one safetensors file, or several shards listed by an index JSON whose
 * `weight_map` maps tensor names to shard file names (relative to the index's folder).
 */
export class Checkpoint implements TensorSource {
  /** The folder the checkpoint lives in (used in error messages). */
  readonly dir: string;
  /** The file the checkpoint was opened from: the single safetensors file or the index JSON. */
  readonly source: string;
  /** The open files, one per shard. */
  readonly files: readonly WeightFile[];
  private readonly byName: Map<string, TensorInfo>;
  private readonly fileOf: Map<string, WeightFile>;
  /** The name a tensor has in its file, where the checkpoint names it with a prefix (see openParts). */
  private readonly stored = new Map<string, string>();

  private constructor(dir: string, source: string, files: WeightFile[], prefixes: readonly string[] = []) {
    this.dir = dir;
    this.source = source;
    this.files = files;
    this.byName = new Map();
    this.fileOf = new Map();
    files.forEach((f, i) => {
      const prefix = prefixes[i] ?? '';
      for (const [own, t] of f.tensors) {
        const name = prefix + own;
        const other = this.fileOf.get(name);
        if (other !== undefined) {
          throw new SafetensorsError(source, `tensor is stored in two shards: ${other.path} and ${f.path}`, name);
        }
        this.byName.set(name, prefix ? { ...t, name } : t);
        this.fileOf.set(name, f);
        if (prefix) this.stored.set(name, own);
      }
    });
  }

  /**
   * One checkpoint from several folders of a model (VILA's `llm/`, `vision_tower/`,
   * `mm_projector/`), each opened as by {@link open}; the tensors of part i are named with
   * `parts[i].prefix` before their stored names.
   */
  static openParts(dir: string, parts: readonly { folder: string; prefix: string }[]): Checkpoint {
    const opened: Checkpoint[] = [];
    try {
      for (const p of parts) opened.push(Checkpoint.open(path.join(dir, p.folder)));
    } catch (e) {
      for (const c of opened) c.close();
      throw e;
    }
    const files: WeightFile[] = [],
      prefixes: string[] = [];
    opened.forEach((c, i) => {
      if (c.stored.size > 0) throw new Error('internal: nested checkpoint parts');
      for (const f of c.files) {
        files.push(f);
        prefixes.push(parts[i].prefix);
      }
    });
    try {
      return new Checkpoint(dir, dir, files, prefixes);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  /**
   * Opens a checkpoint. `pathOrDir` may be a folder (holding `model.safetensors`, or else the shard index),
   * a single `.safetensors` file, or an index `.json` file. A sharded checkpoint is validated: the index has
   * the right shape, every shard exists and parses, every tensor of `weight_map` is present in the shard it
   * names, and no tensor is stored in two shards. Tensors present in a shard but absent from `weight_map`
   * are still available.
   */
  static open(pathOrDir: string, opts: CheckpointOptions = {}): Checkpoint {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(pathOrDir);
    } catch (e) {
      throw new SafetensorsError(pathOrDir, `cannot open checkpoint: ${(e as Error).message}`);
    }
    if (stat.isFile()) {
      const dir = path.dirname(pathOrDir);
      if (pathOrDir.endsWith('.json')) return Checkpoint.openIndex(dir, pathOrDir);
      if (pathOrDir.endsWith('.pt')) return new Checkpoint(dir, pathOrDir, [TorchPtFile.open(pathOrDir)]);
      return new Checkpoint(dir, pathOrDir, [SafetensorsFile.open(pathOrDir)]);
    }
    const single = path.join(pathOrDir, SINGLE_FILE_NAME);
    const index = path.join(pathOrDir, opts.indexName ?? DEFAULT_INDEX_NAME);
    if (opts.indexName === undefined && fs.existsSync(single)) {
      return new Checkpoint(pathOrDir, single, [SafetensorsFile.open(single)]);
    }
    if (fs.existsSync(index)) return Checkpoint.openIndex(pathOrDir, index);
    // A folder without safetensors but with one PyTorch state dict (TinyChat's `*-awq-v2.pt`).
    const pts = opts.indexName === undefined ? fs.readdirSync(pathOrDir).filter((f) => f.endsWith('.pt')) : [];
    if (pts.length === 1) {
      const file = path.join(pathOrDir, pts[0]);
      return new Checkpoint(pathOrDir, file, [TorchPtFile.open(file)]);
    }
    throw new SafetensorsError(
      pathOrDir,
      opts.indexName !== undefined
        ? `no checkpoint found: index ${opts.indexName} does not exist`
        : pts.length > 1
          ? `no checkpoint found: no ${SINGLE_FILE_NAME} or ${DEFAULT_INDEX_NAME}, and ${pts.length} .pt files (${pts.join(', ')}): keep the one to load`
          : `no checkpoint found: neither ${SINGLE_FILE_NAME} nor ${DEFAULT_INDEX_NAME} (nor one .pt state dict) exists`,
    );
  }

  /** Opens and cross-checks the shards listed by the index file `indexPath`. */
  private static openIndex(dir: string, indexPath: string): Checkpoint {
    const err = (msg: string, tensor?: string) => new SafetensorsError(indexPath, msg, tensor);
    let index: unknown;
    try {
      index = readJsonFile(indexPath, { what: 'shard index' });
    } catch (e) {
      throw err((e as Error).message.replace(`${indexPath}: `, ''));
    }
    if (!isPlainObject(index)) throw err(`index must be a JSON object, found ${describe(index)}`);
    const weightMap = index['weight_map'];
    if (!isPlainObject(weightMap)) throw err(`"weight_map" must be an object, found ${describe(weightMap)}`);

    const entries: [string, string][] = [];
    for (const [tensor, shard] of Object.entries(weightMap)) {
      if (typeof shard !== 'string' || shard === '') {
        throw err(`"weight_map" entry must be a shard file name, found ${describe(shard)}`, tensor);
      }
      const rel = path.relative(path.resolve(dir), path.resolve(dir, shard));
      if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) {
        throw err(`shard "${shard}" lies outside the checkpoint folder`, tensor);
      }
      entries.push([tensor, shard]);
    }

    const files = new Map<string, SafetensorsFile>();
    try {
      for (const [, shard] of entries) {
        if (files.has(shard)) continue;
        const shardPath = path.join(dir, shard);
        if (!fs.existsSync(shardPath)) throw err(`shard file "${shard}" does not exist (looked for ${shardPath})`);
        files.set(shard, SafetensorsFile.open(shardPath));
      }
      for (const [tensor, shard] of entries) {
        if (!files.get(shard)!.has(tensor)) {
          throw err(`"weight_map" puts it in shard "${shard}", but that shard does not hold it`, tensor);
        }
      }
      return new Checkpoint(dir, indexPath, [...files.values()]);
    } catch (e) {
      for (const f of files.values()) f.close();
      throw e;
    }
  }

  /** Whether the checkpoint holds tensor `name`. */
  has(name: string): boolean {
    return this.byName.has(name);
  }

  /**
   * Description of tensor `name`. When it is absent, throws a {@link SafetensorsError} naming the checkpoint
   * folder and the tensor, and suggesting stored names that end the same way (e.g. a missing prefix).
   */
  info(name: string): TensorInfo {
    const t = this.byName.get(name);
    if (t !== undefined) return t;
    const similar = similarNames(name, [...this.byName.keys()]);
    const hint = similar.length > 0 ? `; similar names: ${similar.map((s) => `"${s}"`).join(', ')}` : '';
    throw new SafetensorsError(this.dir, `no such tensor in the checkpoint${hint}`, name);
  }

  /** All tensor names, sorted. */
  names(): string[] {
    return [...this.byName.keys()].sort();
  }

  /** Reads the raw bytes of tensor `name` into `dest`; see {@link SafetensorsFile.readInto}. */
  readInto(name: string, dest: Uint8Array): void {
    this.info(name);
    this.fileOf.get(name)!.readInto(this.stored.get(name) ?? name, dest);
  }

  /** Where tensor `name` is stored: its file, and its name there (without a part's prefix). */
  location(name: string): { file: WeightFile; stored: string } {
    this.info(name);
    return { file: this.fileOf.get(name)!, stored: this.stored.get(name) ?? name };
  }

  /** Closes every shard. */
  close(): void {
    for (const f of this.files) f.close();
  }
}

/**
 * Stored names sharing the longest run of trailing dot-separated components with `name` (at least two,
 * e.g. `q_proj.weight`), at most five of them.
 */
function similarNames(name: string, stored: string[]): string[] {
  const want = name.split('.').reverse();
  let best = 2;
  let found: string[] = [];
  for (const s of stored) {
    const parts = s.split('.').reverse();
    let common = 0;
    while (common < want.length && common < parts.length && want[common] === parts[common]) common++;
    if (common > best) {
      best = common;
      found = [s];
    } else if (common === best) {
      found.push(s);
    }
  }
  return found.sort().slice(0, 5);
}

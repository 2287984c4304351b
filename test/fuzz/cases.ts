// The fuzz test's bad inputs, made from a seed: mutations of the default model's folder (config
// fields, safetensors headers, tokenizer, chat template, preprocessor and generation configs),
// images (formats, sizes, truncation, lying headers, non-files), eval files and flags. Each case
// says which command must fail (or may), and which names a failure message must contain (the
// file, field, tensor or flag at fault).
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import sharp from 'sharp';
import { Rng, pngDeclaring } from '../helpers.js';

export const MODEL_DIR = new URL('../../../models/scenes-vlm/', import.meta.url).pathname;
export const SAMPLES = new URL('../../../samples/scenes/', import.meta.url).pathname;
export const SAMPLE_IMAGE = path.join(SAMPLES, '3000001.png');
export const QUESTION = 'What colour is the triangle in the top middle?';

/** What a case expects of the command that exercises it. */
export type Expect = 'fail' | 'pass' | 'any';

export interface FuzzCase {
  index: number;
  /** The family of mutation, for the counts. */
  kind: 'config' | 'tensors' | 'tokenizer' | 'template' | 'preprocessor' | 'generation' | 'image' | 'eval' | 'flags' | 'paths';
  description: string;
  /** The model folder is mutated: inspect and loading run too, and must agree. */
  folder: boolean;
  /** The command that must fail / pass / may do either: run (default) or eval. */
  command: 'run' | 'eval';
  expect: Expect;
  /** A failure's message must contain one of these (case-insensitive). */
  names: string[];
  /** Extra flags for the command. */
  args: string[];
  /** Builds the case's files under `dir` (model/, img, episodes.jsonl): returns the image path. */
  build(dir: string): Promise<{ model: string; image: string; data?: string }>;
}

// ---- the model folder ---------------------------------------------------------------------------

const FILES = [
  'config.json',
  'model.safetensors',
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
  'preprocessor_config.json',
  'generation_config.json',
];

/** A copy of the default model's folder whose files link to the originals, except those `edit` writes. */
async function modelCopy(dir: string, edit: (m: string) => void | Promise<void>): Promise<string> {
  const m = path.join(dir, 'model');
  fs.mkdirSync(m);
  for (const f of FILES) fs.symlinkSync(path.join(MODEL_DIR, f), path.join(m, f));
  await edit(m);
  return m;
}

/** Replaces a linked file by a real one. */
function own(m: string, f: string): string {
  const p = path.join(m, f);
  const text = fs.readFileSync(p);
  fs.rmSync(p);
  fs.writeFileSync(p, text);
  return p;
}

const readJson = (p: string): Record<string, unknown> => JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;

function editJson(m: string, f: string, edit: (j: Record<string, unknown>) => void): void {
  const p = own(m, f);
  const j = readJson(p);
  edit(j);
  fs.writeFileSync(p, JSON.stringify(j, null, 2));
}

function writeText(m: string, f: string, text: string | Buffer): void {
  const p = path.join(m, f);
  fs.rmSync(p, { force: true });
  fs.writeFileSync(p, text);
}

/** Sets (or deletes, value undefined) a field by its dotted path. */
function setPath(j: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let o = j;
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
  const last = keys[keys.length - 1];
  if (value === undefined) delete o[last];
  else o[last] = value;
}

function getPath(j: Record<string, unknown>, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)?.[k], j);
}

// ---- safetensors ---------------------------------------------------------------------------------

interface SafetensorsParts {
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  data: Buffer;
}

let baseST: SafetensorsParts | null = null;
function baseSafetensors(): SafetensorsParts {
  if (!baseST) {
    const b = fs.readFileSync(path.join(MODEL_DIR, 'model.safetensors'));
    const n = Number(b.readBigUInt64LE(0));
    baseST = { header: JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as SafetensorsParts['header'], data: b.subarray(8 + n) };
  }
  return baseST;
}

function writeSafetensors(file: string, header: unknown, data: Buffer, lengthOverride?: bigint): void {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
}

// ---- images ----------------------------------------------------------------------------------------

// ---- the cases -------------------------------------------------------------------------------------

type Maker = (rng: Rng, index: number) => FuzzCase;

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(xs.length)];

/** A case on a mutated model folder (inspect, loading and run), the sample image. */
function folderCase(
  index: number,
  kind: FuzzCase['kind'],
  description: string,
  expect: Expect,
  names: string[],
  edit: (m: string) => void | Promise<void>,
  args: string[] = [],
): FuzzCase {
  return {
    index,
    kind,
    description,
    folder: true,
    command: 'run',
    expect,
    names,
    args,
    build: async (dir) => ({ model: await modelCopy(dir, edit), image: SAMPLE_IMAGE }),
  };
}

/** A case on the intact model with another image or flags. */
function inputCase(
  index: number,
  kind: FuzzCase['kind'],
  description: string,
  expect: Expect,
  names: string[],
  image: (dir: string) => string | Promise<string>,
  args: string[] = [],
): FuzzCase {
  return {
    index,
    kind,
    description,
    folder: false,
    command: 'run',
    expect,
    names,
    args,
    build: async (dir) => ({ model: MODEL_DIR, image: await image(dir) }),
  };
}

const NUMERIC_FIELDS = [
  'text_config.hidden_size',
  'text_config.intermediate_size',
  'text_config.num_attention_heads',
  'text_config.num_key_value_heads',
  'text_config.num_hidden_layers',
  'text_config.vocab_size',
  'text_config.head_dim',
  'vision_config.hidden_size',
  'vision_config.intermediate_size',
  'vision_config.num_attention_heads',
  'vision_config.num_hidden_layers',
  'vision_config.image_size',
  'vision_config.patch_size',
  'image_token_index',
  'text_config.max_position_embeddings',
];
/** Values that cannot be a size. */
const BAD_SIZES: unknown[] = ['abc', -1, 0, 1.5, [], {}, true, '64', 1e30, Number.MAX_SAFE_INTEGER + 2];

const configMakers: Maker[] = [
  (rng, i) => {
    const f = pick(rng, [
      'text_config.hidden_size',
      'text_config.num_hidden_layers',
      'text_config.vocab_size',
      'text_config.intermediate_size',
      'text_config.num_attention_heads',
      'vision_config.hidden_size',
      'vision_config.image_size',
      'vision_config.patch_size',
      'vision_config.num_hidden_layers',
      'vision_config.intermediate_size',
      'vision_config',
      'text_config',
      'model_type',
    ]);
    return folderCase(i, 'config', `config.json: delete ${f}`, 'fail', ['config.json', f.split('.').pop()!], (m) =>
      editJson(m, 'config.json', (j) => setPath(j, f, undefined)),
    );
  },
  (rng, i) => {
    const f = pick(
      rng,
      NUMERIC_FIELDS.filter((x) => x !== 'text_config.max_position_embeddings'),
    );
    const v = pick(rng, BAD_SIZES);
    return folderCase(i, 'config', `config.json: ${f} = ${JSON.stringify(v)}`, 'fail', ['config.json', f.split('.').pop()!, 'tensor'], (m) =>
      editJson(m, 'config.json', (j) => setPath(j, f, v)),
    );
  },
  (rng, i) => {
    // A size off by a little: the tensors no longer match (or a head count no longer divides).
    const f = pick(
      rng,
      NUMERIC_FIELDS.filter((x) => !['text_config.max_position_embeddings', 'image_token_index'].includes(x)),
    );
    const d = pick(rng, [-2, -1, 1, 2, 16]);
    // The tower's head count is in no tensor's shape: a count that still divides the width runs (as in transformers).
    const expect: Expect = f === 'vision_config.num_attention_heads' && 128 % (4 + d) === 0 ? 'any' : 'fail';
    return folderCase(i, 'config', `config.json: ${f} ${d > 0 ? '+' : ''}${d}`, expect, ['config.json', f.split('.').pop()!, 'tensor', 'head'], (m) =>
      editJson(m, 'config.json', (j) => setPath(j, f, (getPath(j, f) as number) + d)),
    );
  },
  (rng, i) => {
    const [f, v, expect, names] = pick(rng, [
      ['model_type', 'gpt9', 'fail', ['model_type']],
      ['model_type', 'idefics3', 'fail', ['model_type']],
      ['text_config.model_type', 'mistral', 'fail', ['model_type']],
      ['vision_config.model_type', 'siglip_vision_model', 'fail', ['model_type']],
      ['text_config.hidden_act', 'relu6', 'fail', ['hidden_act']],
      ['projector_hidden_act', 'tanh', 'fail', ['projector_hidden_act']],
      ['vision_config.hidden_act', 'nope', 'fail', ['hidden_act']],
      ['image_token_index', 5, 'fail', ['image_token_index']],
      ['image_token_index', 99999, 'fail', ['image_token_index']],
      ['text_config.eos_token_id', 't', 'fail', ['eos_token_id']],
      ['text_config.eos_token_id', 500, 'fail', ['eos_token_id']],
      ['vision_feature_select_strategy', 'cls', 'fail', ['vision_feature_select_strategy']],
      ['vision_feature_layer', 9, 'fail', ['vision_feature_layer']],
      ['vision_feature_layer', [-2, -1], 'fail', ['vision_feature_layer']],
      ['vision_feature_layer', 'last', 'fail', ['vision_feature_layer']],
      ['text_config.rope_theta', -5, 'fail', ['rope_theta']],
      ['text_config.rope_scaling', { rope_type: 'linear', factor: 2 }, 'fail', ['rope_scaling']],
      ['text_config.rms_norm_eps', 'small', 'fail', ['rms_norm_eps']],
      ['text_config.max_position_embeddings', 64, 'fail', ['max_position_embeddings', 'context window']],
      ['text_config.max_position_embeddings', 1e12, 'pass', ['max_position_embeddings']],
      ['text_config.max_position_embeddings', 2 ** 40, 'pass', ['max_position_embeddings']],
      ['text_config.rope_theta', 1e9, 'pass', ['rope_theta']],
      ['vision_feature_layer', -1, 'pass', ['vision_feature_layer']],
      ['text_config.tie_word_embeddings', true, 'any', ['tie_word_embeddings', 'tensor']],
      ['multimodal_projector_bias', false, 'fail', ['tensor', 'multimodal_projector_bias']],
      ['text_config.attention_bias', true, 'fail', ['tensor', 'attention_bias']],
      ['vision_config.num_channels', 4, 'fail', ['tensor', 'num_channels']],
      ['dtype', 'float64', 'pass', ['dtype']],
    ] as [string, unknown, Expect, string[]][]);
    return folderCase(i, 'config', `config.json: ${f} = ${JSON.stringify(v)}`, expect, ['config.json', ...names], (m) =>
      editJson(m, 'config.json', (j) => setPath(j, f, v)),
    );
  },
  (rng, i) => {
    const text = fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8');
    const kind = pick(rng, ['truncate', 'bom', 'garbage', 'empty', 'array', 'null', 'folder', 'fifo', 'device', 'missing', 'trailing']);
    const expect: Expect = kind === 'bom' ? 'pass' : 'fail';
    return folderCase(i, 'config', `config.json: ${kind}`, expect, ['config.json', 'model folder'], (m) => {
      const p = path.join(m, 'config.json');
      fs.rmSync(p);
      if (kind === 'truncate') fs.writeFileSync(p, text.slice(0, 1 + rng.int(text.length - 2)));
      else if (kind === 'bom') fs.writeFileSync(p, '\ufeff' + text);
      else if (kind === 'garbage') fs.writeFileSync(p, Buffer.from(Array.from({ length: 200 }, () => rng.int(256))));
      else if (kind === 'empty') fs.writeFileSync(p, '');
      else if (kind === 'array') fs.writeFileSync(p, '[1, 2]');
      else if (kind === 'null') fs.writeFileSync(p, 'null');
      else if (kind === 'folder') fs.mkdirSync(p);
      else if (kind === 'fifo') execFileSync('mkfifo', [p]);
      else if (kind === 'device') fs.symlinkSync('/dev/zero', p);
      else if (kind === 'trailing') fs.writeFileSync(p, text + '\n}');
    });
  },
];

const tensorMakers: Maker[] = [
  (rng, i) => {
    const st = baseSafetensors();
    const names = Object.keys(st.header).filter((n) => n !== '__metadata__');
    const name = pick(rng, names);
    const kind = pick(rng, [
      'drop',
      'rename',
      'extra',
      'dtype-size',
      'dtype-unknown',
      'shape-swap',
      'shape-grow',
      'offsets-past',
      'offsets-overlap',
      'offsets-reverse',
      'offsets-type',
      'shape-negative',
      'entry-string',
    ]);
    return folderCase(i, 'tensors', `model.safetensors: ${kind} ${name}`, 'fail', ['model.safetensors', name, 'tensor'], (m) => {
      const h = JSON.parse(JSON.stringify(st.header)) as Record<string, Record<string, unknown>>;
      const e = h[name];
      const [b, end] = e.data_offsets as [number, number];
      const shape = e.shape as number[];
      switch (kind) {
        case 'drop':
          delete h[name];
          break;
        case 'rename':
          h[`${name}.renamed`] = e;
          delete h[name];
          break;
        case 'extra':
          h['extra_head.weight'] = { dtype: 'BF16', shape: [0], data_offsets: [0, 0] };
          break;
        case 'dtype-size':
          e.dtype = 'F32';
          break;
        case 'dtype-unknown':
          e.dtype = 'Q4_K';
          break;
        case 'shape-swap':
          if (shape.length >= 2 && shape[0] !== shape[1]) e.shape = [shape[1], shape[0], ...shape.slice(2)];
          else e.shape = [...shape, 1, 2];
          break;
        case 'shape-grow':
          e.shape = shape.map((d, k) => (k === 0 ? d + 1 : d));
          break;
        case 'offsets-past':
          e.data_offsets = [b + st.data.length, end + st.data.length];
          break;
        case 'offsets-overlap':
          e.data_offsets = [Math.max(0, b - 2), Math.max(0, b - 2) + (end - b)];
          break;
        case 'offsets-reverse':
          e.data_offsets = [end, b];
          break;
        case 'offsets-type':
          e.data_offsets = [String(b), end];
          break;
        case 'shape-negative':
          e.shape = [-shape[0], ...shape.slice(1)];
          break;
        case 'entry-string':
          h[name] = 'tensor' as unknown as Record<string, unknown>;
          break;
      }
      writeSafetensors(path.join(m, 'model.safetensors'), h, st.data);
    });
  },
  (rng, i) => {
    const st = baseSafetensors();
    const kind = pick(rng, [
      'truncate-data',
      'truncate-header',
      'length-huge',
      'length-past',
      'not-json',
      'not-utf8',
      'not-object',
      'metadata-bad',
      'empty',
      'seven-bytes',
      'folder',
      'fifo',
      'missing',
      'device',
    ]);
    return folderCase(i, 'tensors', `model.safetensors: ${kind}`, 'fail', ['model.safetensors', 'checkpoint', 'tensor'], (m) => {
      const p = path.join(m, 'model.safetensors');
      fs.rmSync(p);
      const json = Buffer.from(JSON.stringify(st.header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      switch (kind) {
        case 'truncate-data':
          fs.writeFileSync(p, Buffer.concat([len, json, st.data.subarray(0, rng.int(st.data.length))]));
          break;
        case 'truncate-header':
          fs.writeFileSync(p, Buffer.concat([len, json.subarray(0, rng.int(json.length))]));
          break;
        case 'length-huge':
          writeSafetensors(p, st.header, st.data, 2n ** 62n);
          break;
        case 'length-past':
          writeSafetensors(p, st.header, st.data, BigInt(json.length + st.data.length + 100));
          break;
        case 'not-json':
          fs.writeFileSync(p, Buffer.concat([len, Buffer.alloc(json.length, '{'), st.data]));
          break;
        case 'not-utf8':
          fs.writeFileSync(p, Buffer.concat([len, Buffer.alloc(json.length, 0xff), st.data]));
          break;
        case 'not-object':
          writeSafetensors(p, [1, 2, 3], st.data);
          break;
        case 'metadata-bad':
          writeSafetensors(p, { ...st.header, __metadata__: { format: 7 } }, st.data);
          break;
        case 'empty':
          fs.writeFileSync(p, '');
          break;
        case 'seven-bytes':
          fs.writeFileSync(p, Buffer.alloc(7));
          break;
        case 'folder':
          fs.mkdirSync(p);
          break;
        case 'fifo':
          execFileSync('mkfifo', [p]);
          break;
        case 'device':
          fs.symlinkSync('/dev/zero', p);
          break;
        case 'missing':
          break;
      }
    });
  },
];

const tokenizerMakers: Maker[] = [
  (rng, i) => {
    const kind = pick(rng, [
      'truncate',
      'no-model',
      'model-type',
      'missing',
      'not-object',
      'image-token-gone',
      'vocab-word-gone',
      'folder',
      'bom',
      'added-not-list',
    ]);
    const expect: Expect = kind === 'vocab-word-gone' || kind === 'bom' ? 'any' : 'fail';
    return folderCase(i, 'tokenizer', `tokenizer.json: ${kind}`, expect, ['tokenizer.json', 'tokenizer', 'image_token_index'], (m) => {
      const p = path.join(m, 'tokenizer.json');
      const text = fs.readFileSync(p, 'utf8');
      const j = JSON.parse(text) as Record<string, unknown>;
      fs.rmSync(p);
      const model = j.model as Record<string, unknown>;
      switch (kind) {
        case 'truncate':
          fs.writeFileSync(p, text.slice(0, rng.int(text.length - 1)));
          break;
        case 'no-model':
          delete j.model;
          fs.writeFileSync(p, JSON.stringify(j));
          break;
        case 'model-type':
          model.type = 'Nope';
          fs.writeFileSync(p, JSON.stringify(j));
          break;
        case 'missing':
          break;
        case 'not-object':
          fs.writeFileSync(p, '"tokenizer"');
          break;
        case 'image-token-gone':
          j.added_tokens = (j.added_tokens as { content: string }[]).filter((t) => t.content !== '<image>');
          delete (model.vocab as Record<string, number>)['<image>'];
          fs.writeFileSync(p, JSON.stringify(j));
          break;
        case 'vocab-word-gone':
          delete (model.vocab as Record<string, number>)[
            pick(
              rng,
              Object.keys(model.vocab as object).filter((w) => /^[a-z]+$/.test(w)),
            )
          ];
          fs.writeFileSync(p, JSON.stringify(j));
          break;
        case 'folder':
          fs.mkdirSync(p);
          break;
        case 'bom':
          fs.writeFileSync(p, '\ufeff' + text);
          break;
        case 'added-not-list':
          j.added_tokens = 'none';
          fs.writeFileSync(p, JSON.stringify(j));
          break;
      }
    });
  },
  (rng, i) => {
    const [kind, value, expect] = pick(rng, [
      ['invalid', null, 'fail'],
      ['bos_token', 42, 'any'],
      ['add_bos_token', 'yes', 'any'],
      ['eos_token', '<nothing>', 'any'],
      ['chat_template', 7, 'any'],
    ] as [string, unknown, Expect][]);
    return folderCase(i, 'tokenizer', `tokenizer_config.json: ${kind}`, expect, ['tokenizer_config.json', 'tokenizer'], (m) => {
      if (kind === 'invalid') writeText(m, 'tokenizer_config.json', '{"bos_token": "<s>",');
      else
        editJson(m, 'tokenizer_config.json', (j) => {
          j[kind] = value;
        });
    });
  },
];

const templateMakers: Maker[] = [
  (rng, i) => {
    const src = fs.readFileSync(path.join(MODEL_DIR, 'chat_template.jinja'), 'utf8');
    const [kind, text, expect] = pick(rng, [
      ['syntax', '{% for m in messages %}{{ m.role }', 'fail'],
      ['unclosed', '{% for m in messages %}{{ m.role }}', 'fail'],
      ['truncated', src.slice(0, 10 + rng.int(src.length - 20)), 'any'],
      ['loop', '{% for i in range(100000000) %}x{% endfor %}', 'fail'],
      ['nested-loops', '{% for a in range(5000) %}{% for b in range(5000) %}{% for c in range(5000) %}{% endfor %}{% endfor %}{% endfor %}', 'fail'],
      ['recursion', '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}', 'fail'],
      ['doubling', "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", 'fail'],
      ['raise', "{{ raise_exception('this template refuses everything') }}", 'fail'],
      ['unknown-filter', '{{ messages | frobnicate }}', 'fail'],
      [
        'drops-images',
        "{% for m in messages %}{{ m.role.upper() }}: {% for c in m.content if c.type == 'text' %}{{ c.text }}{% endfor %}{% endfor %}ASSISTANT:",
        'fail',
      ],
      [
        'two-images',
        "{% for m in messages %}{{ m.role.upper() }}: {% for c in m.content %}{% if c.type == 'image' %}<image>\n<image>\n{% else %}{{ c.text }}{% endif %}{% endfor %}{% endfor %}ASSISTANT:",
        'fail',
      ],
      ['strings-only', '{% for m in messages %}{{ m.content + " " }}{% endfor %}', 'fail'],
      ['deep-parens', `{{ ${'('.repeat(3000)}1${')'.repeat(3000)} }}`, 'fail'],
      ['empty', '', 'fail'],
      ['huge-indent', "{{ 'x' | indent(700000000) }}", 'fail'],
      ['missing', null, 'pass'],
      ['binary', Buffer.from(Array.from({ length: 64 }, () => rng.int(256))).toString('latin1'), 'any'],
    ] as [string, string | null, Expect][]);
    return folderCase(i, 'template', `chat_template.jinja: ${kind}`, expect, ['chat_template.jinja', 'chat template'], (m) => {
      fs.rmSync(path.join(m, 'chat_template.jinja'));
      if (text !== null) fs.writeFileSync(path.join(m, 'chat_template.jinja'), text);
    });
  },
  (rng, i) => {
    const kind = pick(rng, ['invalid', 'not-string', 'list-no-default', 'fifo']);
    return folderCase(i, 'template', `chat_template.json: ${kind}`, 'fail', ['chat_template.json', 'chat template'], (m) => {
      fs.rmSync(path.join(m, 'chat_template.jinja'));
      const p = path.join(m, 'chat_template.json');
      if (kind === 'invalid') fs.writeFileSync(p, '{"chat_template": "{{ x }}');
      else if (kind === 'not-string') fs.writeFileSync(p, '{"chat_template": 42}');
      else if (kind === 'list-no-default') fs.writeFileSync(p, JSON.stringify({ chat_template: [{ name: 'tool_use', template: '{{ 1 }}' }] }));
      else execFileSync('mkfifo', [p]);
    });
  },
];

const preprocessorMakers: Maker[] = [
  (rng, i) => {
    const [f, v, expect, names] = pick(rng, [
      ['size', { shortest_edge: 1e6 }, 'fail', ['size']],
      ['size', { shortest_edge: 100000 }, 'fail', ['size']],
      ['size', { shortest_edge: -3 }, 'fail', ['size']],
      ['size', 'big', 'fail', ['size']],
      ['size', { height: 300, width: 300 }, 'pass', ['size']],
      ['size', { shortest_edge: 64 }, 'pass', ['size']],
      ['crop_size', { height: 200, width: 224 }, 'fail', ['crop_size']],
      ['crop_size', 'all', 'fail', ['crop_size']],
      ['do_center_crop', false, 'fail', ['do_center_crop', 'size']],
      ['image_mean', [0.5, 0.5], 'fail', ['image_mean']],
      ['image_std', [0, 1, 1], 'fail', ['image_std']],
      ['image_std', 'one', 'fail', ['image_std']],
      ['resample', 9, 'fail', ['resample']],
      ['resample', 'bicubic', 'fail', ['resample']],
      ['rescale_factor', 'tiny', 'fail', ['rescale_factor']],
      ['image_processor_type', 'MagicProcessor', 'fail', ['image_processor_type']],
      ['do_resize', 'yes', 'fail', ['do_resize']],
      ['image_mean', [0.2, 0.2, 0.2], 'pass', ['image_mean']],
    ] as [string, unknown, Expect, string[]][]);
    return folderCase(i, 'preprocessor', `preprocessor_config.json: ${f} = ${JSON.stringify(v)}`, expect, ['preprocessor_config.json', ...names], (m) =>
      editJson(m, 'preprocessor_config.json', (j) => {
        j[f] = v;
      }),
    );
  },
  (rng, i) => {
    const kind = pick(rng, ['missing', 'invalid', 'array', 'bom', 'folder']);
    return folderCase(i, 'preprocessor', `preprocessor_config.json: ${kind}`, kind === 'bom' ? 'pass' : 'fail', ['preprocessor_config.json'], (m) => {
      const p = path.join(m, 'preprocessor_config.json');
      const text = fs.readFileSync(p, 'utf8');
      fs.rmSync(p);
      if (kind === 'invalid') fs.writeFileSync(p, text.slice(0, text.length / 2));
      else if (kind === 'array') fs.writeFileSync(p, '[]');
      else if (kind === 'bom') fs.writeFileSync(p, '\ufeff' + text);
      else if (kind === 'folder') fs.mkdirSync(p);
    });
  },
];

const generationMakers: Maker[] = [
  (rng, i) => {
    const [kind, text, expect] = pick(rng, [
      ['eos string', '{"eos_token_id": "t"}', 'fail'],
      ['eos list of strings', '{"eos_token_id": ["</s>"]}', 'fail'],
      ['eos negative', '{"eos_token_id": -2}', 'fail'],
      ['eos past vocab', '{"eos_token_id": 9999}', 'fail'],
      ['eos float', '{"eos_token_id": 2.5}', 'fail'],
      ['invalid', '{"eos_token_id": 2', 'fail'],
      ['bom', '\ufeff{"bos_token_id": 1, "eos_token_id": 2}', 'pass'],
      ['missing', null, 'pass'],
      ['array', '[2]', 'fail'],
      ['eos list', '{"eos_token_id": [2, 3]}', 'pass'],
    ] as [string, string | null, Expect][]);
    return folderCase(i, 'generation', `generation_config.json: ${kind}`, expect, ['generation_config.json', 'eos_token_id'], (m) => {
      fs.rmSync(path.join(m, 'generation_config.json'));
      if (text !== null) fs.writeFileSync(path.join(m, 'generation_config.json'), text);
    });
  },
];

const imageMakers: Maker[] = [
  (rng, i) => {
    const fmt = pick(rng, ['png', 'jpeg', 'webp', 'gif', 'tiff'] as const);
    const [w, h] = pick(rng, [
      [1, 1],
      [7, 300],
      [224, 224],
      [640, 480],
      [3000, 20],
      [333, 777],
      [16, 16],
    ]);
    return inputCase(i, 'image', `image: ${fmt} ${w}x${h}`, 'pass', ['image'], async (dir) => {
      const p = path.join(dir, `img.${fmt}`);
      await sharp(SAMPLE_IMAGE).resize(w, h, { fit: 'fill' }).toFormat(fmt).toFile(p);
      return p;
    });
  },
  (rng, i) => {
    const fmt = pick(rng, ['png', 'jpeg', 'webp', 'gif'] as const);
    return inputCase(i, 'image', `image: truncated ${fmt}`, 'fail', ['img.'], async (dir) => {
      const b = await sharp(SAMPLE_IMAGE).toFormat(fmt).toBuffer();
      const p = path.join(dir, `img.${fmt}`);
      fs.writeFileSync(p, b.subarray(0, 20 + rng.int(Math.max(1, b.length / 2))));
      return p;
    });
  },
  (rng, i) => {
    const kind = pick(rng, ['empty', 'text', 'random', 'folder', 'fifo', 'device', 'missing', 'lying-huge', 'lying-wide', 'svg-huge', 'html']);
    return inputCase(i, 'image', `image: ${kind}`, 'fail', ['img', 'image', '--image'], (dir) => {
      const p = path.join(dir, 'img.png');
      switch (kind) {
        case 'empty':
          fs.writeFileSync(p, '');
          break;
        case 'text':
          fs.writeFileSync(p, 'this is not an image');
          break;
        case 'random':
          fs.writeFileSync(p, Buffer.from(Array.from({ length: 4096 }, () => rng.int(256))));
          break;
        case 'folder':
          fs.mkdirSync(p);
          break;
        case 'fifo':
          execFileSync('mkfifo', [p]);
          break;
        case 'device':
          fs.symlinkSync('/dev/zero', p);
          break;
        case 'missing':
          break;
        case 'lying-huge':
          fs.writeFileSync(p, pngDeclaring(SAMPLE_IMAGE, 100000, 100000));
          break;
        case 'lying-wide':
          fs.writeFileSync(p, pngDeclaring(SAMPLE_IMAGE, 2 ** 30, 3));
          break;
        case 'svg-huge':
          fs.writeFileSync(p, '<svg xmlns="http://www.w3.org/2000/svg" width="200000" height="200000"><rect width="10" height="10"/></svg>');
          break;
        case 'html':
          fs.writeFileSync(p, '<html><body>hi</body></html>');
          break;
      }
      return p;
    });
  },
  (rng, i) => {
    // Legal pixels, but past the bounds: the limit flag, or a preprocessor resize out of bounds.
    const [desc, w, h, args] = pick(rng, [
      ['1x5000 (resize target too large)', 1, 5000, []],
      ['4x6000 (resize target too large)', 4, 6000, []],
      ['224x224 with --max-image-pixels 1000', 224, 224, ['--max-image-pixels', '1000']],
      ['224x224 with --max-image-bytes 100', 224, 224, ['--max-image-bytes', '100']],
    ] as [string, number, number, string[]][]);
    return inputCase(
      i,
      'image',
      `image: ${desc}`,
      'fail',
      ['megapixels', 'max-image', 'maxPixels', 'maxBytes'],
      async (dir) => {
        const p = path.join(dir, 'img.png');
        await sharp(SAMPLE_IMAGE).resize(w, h, { fit: 'fill' }).png().toFile(p);
        return p;
      },
      args,
    );
  },
];

const flagMakers: Maker[] = [
  (rng, i) => {
    const [desc, args, expect, names] = pick(rng, [
      ['--max-new-tokens 1000000000', ['--max-new-tokens', '1000000000'], 'pass', []],
      ['--threads 512', ['--threads', '512'], 'pass', []],
      ['--method fastv --fastv-k 100', ['--method', 'fastv', '--fastv-k', '100'], 'fail', ['--fastv-k']],
      ['--method fastv --fastv-k 3', ['--method', 'fastv', '--fastv-k', '3'], 'pass', []],
      ['--heatmap into a missing folder', ['--heatmap', '/nonexistent-dir/x.png'], 'fail', ['--heatmap']],
      ['--heatmap onto a folder', ['--heatmap', '/tmp'], 'fail', ['--heatmap']],
      ['--temperature -1', ['--temperature', '-1'], 'fail', ['--temperature']],
      ['--temperature abc', ['--temperature', 'abc'], 'fail', ['--temperature']],
      ['--top-p 2', ['--top-p', '2', '--temperature', '1'], 'fail', ['--top-p']],
      ['--top-k -3', ['--top-k', '-3'], 'fail', ['--top-k']],
      ['--seed 1.5', ['--seed', '1.5'], 'fail', ['--seed']],
      ['--max-new-tokens -1', ['--max-new-tokens', '-1'], 'fail', ['--max-new-tokens']],
      ['--prefill-sparsity 1', ['--method', 'sparsevila', '--prefill-sparsity', '1'], 'fail', ['--prefill-sparsity']],
      ['--visual-budget 1 with visionzip', ['--method', 'visionzip', '--visual-budget', '1'], 'fail', ['--visual-budget']],
      ['--visual-budget 100000 with prumerge', ['--method', 'prumerge', '--visual-budget', '100000'], 'pass', []],
      ['--method quest --visual-budget 1', ['--method', 'quest', '--visual-budget', '1'], 'pass', []],
      ['--method pdrop --pdrop-lambda 1', ['--method', 'pdrop', '--pdrop-lambda', '1'], 'pass', []],
      ['--threads 0', ['--threads', '0'], 'fail', ['--threads']],
      ['--temperature 5 --top-k 1', ['--temperature', '5', '--top-k', '1'], 'pass', []],
      [
        '--method sparsevila --max-new-tokens 40 --temperature 1.5',
        ['--method', 'sparsevila', '--max-new-tokens', '40', '--temperature', '1.5', '--seed', String(rng.int(1000))],
        'pass',
        [],
      ],
      ['--max-image-pixels 0', ['--max-image-pixels', '0'], 'fail', ['--max-image-pixels']],
    ] as [string, string[], Expect, string[]][]);
    return inputCase(i, 'flags', `run ${desc}`, expect, names, () => SAMPLE_IMAGE, args);
  },
  (rng, i) => {
    const [desc, prompt, expect, names] = pick(rng, [
      ['a typed <image>', '<image> What colour is it?', 'fail', ['<image>']],
      ['two typed <image>', 'Compare <image> and <image>', 'fail', ['<image>']],
      ['an empty prompt', '', 'pass', []],
      ['a prompt past the context window', 'red '.repeat(1200), 'fail', ['context window', 'max_position_embeddings']],
      ['control characters', '\u0000\u0007 what\u202e?', 'pass', []],
      ['unknown words', 'Quelle est la couleur du triangle ?', 'pass', []],
      ['a special token as text', 'What is </s> here?', 'any', ['prompt']],
    ] as [string, string, Expect, string[]][]);
    return { ...inputCase(i, 'flags', `run with ${desc}`, expect, names, () => SAMPLE_IMAGE, ['--prompt', prompt]) };
  },
];

/** Episodes of the sample scenes, one line each. */
function sampleEpisodes(): string[] {
  return fs
    .readFileSync(path.join(SAMPLES, 'episodes.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .slice(0, 2)
    .map((l) => {
      const j = JSON.parse(l) as { image: string; questions: unknown[] };
      return JSON.stringify({ image: path.join(SAMPLES, j.image), questions: j.questions.slice(0, 2) });
    });
}

const evalMakers: Maker[] = [
  (rng, i) => {
    const lines = sampleEpisodes();
    const [kind, expect, names] = pick(rng, [
      ['valid', 'pass', []],
      ['blank lines', 'pass', []],
      ['null line 3', 'fail', ['episodes.jsonl:3']],
      ['bad JSON line 3', 'fail', ['episodes.jsonl:3']],
      ['array line 3', 'fail', ['episodes.jsonl:3']],
      ['missing image in episode 2', 'fail', ['missing.png']],
      ['image is a folder', 'fail', ['episode 1', SAMPLES.replace(/\/$/, '')]],
      ['questions not a list line 3', 'fail', ['episodes.jsonl:3']],
      ['question without answer line 3', 'fail', ['episodes.jsonl:3']],
      ['empty file', 'fail', ['episodes.jsonl', 'no episodes']],
      ['only blank lines', 'fail', ['episodes.jsonl', 'no episodes']],
      ['a FIFO', 'fail', ['episodes.jsonl']],
      ['image is a bad PNG', 'fail', ['bad.png']],
      ['CRLF line ends', 'pass', []],
      ['BOM', 'pass', []],
    ] as [string, Expect, string[]][]);
    return {
      index: i,
      kind: 'eval',
      description: `eval: ${kind}`,
      folder: false,
      command: 'eval',
      expect,
      names,
      args: [],
      build: async (dir) => {
        const data = path.join(dir, 'episodes.jsonl');
        // Line 3 is the one made bad (lines 1 and 2: a valid episode and a blank line).
        const body = (third: string) => [lines[0], '', third].join('\n') + '\n';
        switch (kind) {
          case 'valid':
            fs.writeFileSync(data, lines.join('\n') + '\n');
            break;
          case 'blank lines':
            fs.writeFileSync(data, `\n\n${lines[0]}\n\n\n${lines[1]}\n\n`);
            break;
          case 'null line 3':
            fs.writeFileSync(data, body('null'));
            break;
          case 'bad JSON line 3':
            fs.writeFileSync(data, body('{"image": '));
            break;
          case 'array line 3':
            fs.writeFileSync(data, body('[1, 2]'));
            break;
          case 'missing image in episode 2':
            fs.writeFileSync(data, [lines[0], JSON.stringify({ ...(JSON.parse(lines[1]) as object), image: 'missing.png' })].join('\n'));
            break;
          case 'image is a folder':
            fs.writeFileSync(data, JSON.stringify({ ...(JSON.parse(lines[0]) as object), image: SAMPLES }));
            break;
          case 'questions not a list line 3':
            fs.writeFileSync(data, body('{"image": "a.png", "questions": "what?"}'));
            break;
          case 'question without answer line 3':
            fs.writeFileSync(data, body('{"image": "a.png", "questions": [{"type": "colour", "question": "q?"}]}'));
            break;
          case 'empty file':
            fs.writeFileSync(data, '');
            break;
          case 'only blank lines':
            fs.writeFileSync(data, '\n\n  \n');
            break;
          case 'a FIFO':
            execFileSync('mkfifo', [data]);
            break;
          case 'image is a bad PNG':
            fs.writeFileSync(path.join(dir, 'bad.png'), 'nope');
            fs.writeFileSync(data, JSON.stringify({ ...(JSON.parse(lines[0]) as object), image: 'bad.png' }));
            break;
          case 'CRLF line ends':
            fs.writeFileSync(data, lines.join('\r\n') + '\r\n');
            break;
          case 'BOM':
            fs.writeFileSync(data, '\ufeff' + lines.join('\n'));
            break;
        }
        return { model: MODEL_DIR, image: SAMPLE_IMAGE, data };
      },
    };
  },
];

const pathMakers: Maker[] = [
  (rng, i) => {
    const kind = pick(rng, ['model is a file', 'model missing', 'model is a device', 'no weights', 'weights index instead']);
    return {
      index: i,
      kind: 'paths',
      description: `--model: ${kind}`,
      folder: true,
      command: 'run',
      expect: kind === 'weights index instead' ? 'pass' : 'fail',
      names: ['model', 'config.json', 'checkpoint', 'safetensors'],
      args: [],
      build: async (dir) => {
        let model = path.join(dir, 'model');
        if (kind === 'model is a file') {
          fs.writeFileSync(model, 'x');
        } else if (kind === 'model is a device') {
          model = '/dev/null';
        } else if (kind === 'no weights') {
          await modelCopy(dir, (m) => fs.rmSync(path.join(m, 'model.safetensors')));
        } else if (kind === 'weights index instead') {
          await modelCopy(dir, (m) => {
            fs.renameSync(path.join(m, 'model.safetensors'), path.join(m, 'model-00001-of-00001.safetensors'));
            const st = baseSafetensors();
            const map = Object.fromEntries(
              Object.keys(st.header)
                .filter((n) => n !== '__metadata__')
                .map((n) => [n, 'model-00001-of-00001.safetensors']),
            );
            fs.writeFileSync(path.join(m, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
          });
        }
        return { model, image: SAMPLE_IMAGE };
      },
    };
  },
];

/** The makers, weighted by how many distinct inputs each can make. */
const MAKERS: Maker[] = [
  ...configMakers,
  ...configMakers,
  ...tensorMakers,
  ...tensorMakers,
  ...tokenizerMakers,
  ...templateMakers,
  ...templateMakers,
  ...preprocessorMakers,
  ...generationMakers,
  ...imageMakers,
  ...imageMakers,
  ...flagMakers,
  ...evalMakers,
  ...evalMakers,
  ...pathMakers,
];

/** Case `index` of the run seeded by `seed`: the same pair always gives the same case. */
export function makeCase(seed: number, index: number): FuzzCase {
  const rng = new Rng(seed * 100_003 + index);
  const maker = MAKERS[index % MAKERS.length];
  return maker(rng, index);
}

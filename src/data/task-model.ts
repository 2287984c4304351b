// The folder layout of the project's default model (a small LLaVA for the synthetic scenes task):
// a word-level tokenizer over the task's vocabulary, the chat template, the configs, and weights
// (random for tests; the training recipe writes the trained ones in the same layout). Everything is
// in the Hugging Face llava-hf layout, so the engine loads it like a downloaded checkpoint.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { TensorToWrite, writeSafetensors } from '../formats/safetensors.js';
import { COLOURS, GLYPHS, REGIONS, SHAPES, makeScene, rng, splitSeeds } from './scenes.js';

export const SPECIAL = ['<pad>', '<s>', '</s>', '<unk>', '<image>'] as const;
export const IMAGE_TOKEN_ID = 4;

/** How the tokenizer splits text (HF's Whitespace pre-tokenizer, after lower-casing): \w+ or runs of other non-space characters. */
export function words(text: string): string[] {
  return text.toLowerCase().match(/\w+|[^\w\s]+/g) ?? [];
}

/** The task vocabulary: the special tokens, then every word of the questions, answers and chat template, sorted. */
export function taskVocabulary(): string[] {
  const set = new Set<string>();
  const add = (t: string) => {
    for (const w of words(t)) set.add(w);
  };
  [
    'user',
    'assistant',
    ':',
    'zero one two three four five six seven eight nine yes no',
    ...COLOURS,
    ...SHAPES,
    ...SHAPES.map((s) => `${s}s`),
    ...REGIONS,
    ...GLYPHS,
  ].forEach(add);
  // Every question form, from enough scenes to meet each.
  for (const seed of splitSeeds('train', 500))
    for (const q of makeScene(seed).episode) {
      add(q.question);
      add(q.answer);
    }
  return [...SPECIAL, ...[...set].sort()];
}

/** tokenizer.json: WordLevel over the vocabulary, lower-casing, whitespace pre-tokenizer, <s> prepended. */
export function tokenizerJson(vocab: readonly string[]): Record<string, unknown> {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: null,
    model: { type: 'WordLevel', vocab: Object.fromEntries(vocab.map((w, i) => [w, i])), unk_token: '<unk>' },
  };
}

/** The chat template: "USER: <image>\nquestion ASSISTANT: answer</s> USER: ...". */
export const CHAT_TEMPLATE =
  "{% for message in messages %}{{ message['role'].upper() + ': ' }}" +
  "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}" +
  "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}" +
  "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + '</s> ' }}{% endgeneration %}{% endfor %}{% endif %}" +
  "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

export interface TaskModelShape {
  image: number;
  patch: number;
  visionHidden: number;
  visionLayers: number;
  visionHeads: number;
  visionFfn: number;
  textHidden: number;
  textLayers: number;
  textHeads: number;
  textKvHeads: number;
  textFfn: number;
}

/** The default shape: a 224 px CLIP-style tower (256 patches + CLS) and a small Llama; ~4M parameters. */
export const TASK_MODEL_SHAPE: TaskModelShape = {
  image: 224,
  patch: 14,
  visionHidden: 128,
  visionLayers: 4,
  visionHeads: 4,
  visionFfn: 512,
  textHidden: 256,
  textLayers: 4,
  textHeads: 4,
  textKvHeads: 4,
  textFfn: 688,
};

/** config.json of the task model (LlavaForConditionalGeneration). */
export function taskModelConfig(s: TaskModelShape, vocabSize: number): Record<string, unknown> {
  return {
    architectures: ['LlavaForConditionalGeneration'],
    model_type: 'llava',
    dtype: 'float32',
    image_token_index: IMAGE_TOKEN_ID,
    image_seq_length: (s.image / s.patch) ** 2,
    pad_token_id: 0,
    projector_hidden_act: 'gelu',
    multimodal_projector_bias: true,
    tie_word_embeddings: false,
    vision_feature_layer: -2,
    vision_feature_select_strategy: 'default',
    vision_config: {
      model_type: 'clip_vision_model',
      hidden_act: 'quick_gelu',
      hidden_size: s.visionHidden,
      image_size: s.image,
      patch_size: s.patch,
      intermediate_size: s.visionFfn,
      num_attention_heads: s.visionHeads,
      num_hidden_layers: s.visionLayers,
      num_channels: 3,
      layer_norm_eps: 1e-5,
      projection_dim: s.visionHidden,
    },
    text_config: {
      model_type: 'llama',
      hidden_act: 'silu',
      hidden_size: s.textHidden,
      intermediate_size: s.textFfn,
      num_attention_heads: s.textHeads,
      num_key_value_heads: s.textKvHeads,
      head_dim: s.textHidden / s.textHeads,
      num_hidden_layers: s.textLayers,
      vocab_size: vocabSize,
      max_position_embeddings: 1024,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      attention_bias: false,
      mlp_bias: false,
      tie_word_embeddings: false,
    },
  };
}

/** The tensors of the task model (names and shapes as llava-hf), f32, with a fill per tensor. */
export function taskModelTensors(s: TaskModelShape, vocabSize: number, fill: (name: string, shape: number[]) => Float32Array): TensorToWrite[] {
  const out: TensorToWrite[] = [];
  const t = (name: string, shape: number[]) => {
    const v = fill(name, shape);
    out.push({ name, dtype: 'F32', shape, data: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });
  };
  const V = 'vision_tower.vision_model.',
    Dv = s.visionHidden,
    Dt = s.textHidden,
    n = (s.image / s.patch) ** 2;
  t(`${V}embeddings.class_embedding`, [Dv]);
  t(`${V}embeddings.patch_embedding.weight`, [Dv, 3, s.patch, s.patch]);
  t(`${V}embeddings.position_embedding.weight`, [n + 1, Dv]);
  for (const x of ['weight', 'bias']) {
    t(`${V}pre_layrnorm.${x}`, [Dv]);
    t(`${V}post_layernorm.${x}`, [Dv]);
  }
  for (let l = 0; l < s.visionLayers; l++) {
    const p = `${V}encoder.layers.${l}.`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      t(`${p}self_attn.${proj}.weight`, [Dv, Dv]);
      t(`${p}self_attn.${proj}.bias`, [Dv]);
    }
    for (const ln of ['layer_norm1', 'layer_norm2']) {
      t(`${p}${ln}.weight`, [Dv]);
      t(`${p}${ln}.bias`, [Dv]);
    }
    t(`${p}mlp.fc1.weight`, [s.visionFfn, Dv]);
    t(`${p}mlp.fc1.bias`, [s.visionFfn]);
    t(`${p}mlp.fc2.weight`, [Dv, s.visionFfn]);
    t(`${p}mlp.fc2.bias`, [Dv]);
  }
  t('multi_modal_projector.linear_1.weight', [Dt, Dv]);
  t('multi_modal_projector.linear_1.bias', [Dt]);
  t('multi_modal_projector.linear_2.weight', [Dt, Dt]);
  t('multi_modal_projector.linear_2.bias', [Dt]);
  const L = 'language_model.model.',
    kv = (s.textHidden / s.textHeads) * s.textKvHeads;
  t(`${L}embed_tokens.weight`, [vocabSize, Dt]);
  for (let l = 0; l < s.textLayers; l++) {
    const p = `${L}layers.${l}.`;
    t(`${p}self_attn.q_proj.weight`, [Dt, Dt]);
    t(`${p}self_attn.k_proj.weight`, [kv, Dt]);
    t(`${p}self_attn.v_proj.weight`, [kv, Dt]);
    t(`${p}self_attn.o_proj.weight`, [Dt, Dt]);
    t(`${p}mlp.gate_proj.weight`, [s.textFfn, Dt]);
    t(`${p}mlp.up_proj.weight`, [s.textFfn, Dt]);
    t(`${p}mlp.down_proj.weight`, [Dt, s.textFfn]);
    t(`${p}input_layernorm.weight`, [Dt]);
    t(`${p}post_attention_layernorm.weight`, [Dt]);
  }
  t(`${L}norm.weight`, [Dt]);
  t('language_model.lm_head.weight', [vocabSize, Dt]);
  return out;
}

/** Random initial weights: norms 1, biases 0, other tensors uniform with standard deviation 0.02. */
export function randomInit(seed: number): (name: string, shape: number[]) => Float32Array {
  const r = rng(seed);
  return (name, shape) => {
    const v = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (/norm|layernorm|layrnorm|layer_norm/.test(name) && name.endsWith('weight')) v.fill(1);
    else if (!name.endsWith('bias')) for (let i = 0; i < v.length; i++) v[i] = (r() * 2 - 1) * 0.02 * Math.sqrt(3);
    return v;
  };
}

/** Writes the task model's folder: configs, tokenizer, chat template and the given weights (default: random). */
export function writeTaskModel(
  dir: string,
  opts: { shape?: TaskModelShape; fill?: (name: string, shape: number[]) => Float32Array; seed?: number } = {},
): void {
  const s = opts.shape ?? TASK_MODEL_SHAPE;
  const vocab = taskVocabulary();
  mkdirSync(dir, { recursive: true });
  const json = (f: string, v: unknown) => writeFileSync(path.join(dir, f), JSON.stringify(v, null, 2) + '\n');
  json('config.json', taskModelConfig(s, vocab.length));
  json('tokenizer.json', tokenizerJson(vocab));
  json('tokenizer_config.json', {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    pad_token: '<pad>',
    add_bos_token: true,
    add_eos_token: false,
    model_max_length: 1024,
  });
  json('generation_config.json', { bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 });
  json('preprocessor_config.json', {
    image_processor_type: 'CLIPImageProcessor',
    processor_class: 'LlavaProcessor',
    do_resize: true,
    size: { shortest_edge: s.image },
    resample: 3,
    do_center_crop: true,
    crop_size: { height: s.image, width: s.image },
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073],
    image_std: [0.26862954, 0.26130258, 0.27577711],
    do_convert_rgb: true,
  });
  writeFileSync(path.join(dir, 'chat_template.jinja'), CHAT_TEMPLATE);
  writeSafetensors(path.join(dir, 'model.safetensors'), taskModelTensors(s, vocab.length, opts.fill ?? randomInit(opts.seed ?? 1)));
}

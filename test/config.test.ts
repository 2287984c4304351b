import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fixture, tempDir } from './helpers.js';
import { ConfigError } from '../src/formats/config.js';
import { FAMILIES, loadConfig, parseConfig } from '../src/model/registry.js';
import type { ClipTowerConfig, SiglipTowerConfig } from '../src/model/vision-tower/family.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { MetaBackend } from '../src/kernels/meta-backend.js';
import type { CausalLmConfig } from '../src/model/causal-lm/family.js';
import type { LlavaConfig } from '../src/model/llava/config.js';
import type { Idefics3Config } from '../src/model/idefics3/config.js';

/** Writes `json` as config.json into a fresh folder; returns the folder and the file path. */
function writeConfig(json: unknown): { dir: string; file: string } {
  const dir = tempDir('sparsevila-cfg-');
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify(json));
  return { dir, file };
}

/** Asserts that loading `json` from a config.json throws a ConfigError naming the file and every needle. */
function rejects(json: unknown, ...needles: string[]): void {
  const { dir, file } = writeConfig(json);
  assert.throws(
    () => loadConfig(dir),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
      for (const n of [file, ...needles]) {
        assert.ok(e.message.includes(n), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(n)}`);
      }
      return true;
    },
  );
}

const readFixtureJson = (name: string): Record<string, unknown> =>
  JSON.parse(fs.readFileSync(path.join(fixture(name), 'config.json'), 'utf8')) as Record<string, unknown>;

/** A minimal valid llama config plus `extra`. */
const llama = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  vocab_size: 100,
  ...extra,
});

test('llava-tiny: llava with nested CLIP vision and Llama text configs', () => {
  const cfg = loadConfig(fixture('llava-tiny')).config;
  assert.equal(cfg.modelType, 'llava');
  const c = cfg as LlavaConfig;
  assert.deepEqual(c.vision, {
    modelType: 'clip_vision_model',
    hiddenSize: 64,
    intermediateSize: 128,
    numHiddenLayers: 3,
    numAttentionHeads: 4,
    imageSize: 112,
    patchSize: 14,
    numChannels: 3,
    layerNormEps: 1e-5,
    hiddenAct: 'quick_gelu',
    projectionDim: 64,
    torchDtype: 'float16',
  });
  const t = c.text;
  assert.equal(t.modelType, 'llama');
  assert.equal(t.hiddenSize, 64);
  assert.equal(t.intermediateSize, 128);
  assert.equal(t.numHiddenLayers, 3);
  assert.equal(t.numAttentionHeads, 4);
  assert.equal(t.numKeyValueHeads, 2);
  assert.equal(t.headDim, 16);
  assert.equal(t.vocabSize, 32064);
  assert.equal(t.ropeTheta, 10000);
  assert.equal(t.ropeScaling, null);
  assert.equal(t.rmsNormEps, 1e-5);
  assert.equal(t.maxPositionEmbeddings, 4096);
  assert.equal(t.tieWordEmbeddings, false);
  assert.deepEqual(t.attentionBias, { qkv: false, o: false });
  assert.equal(t.mlpBias, false);
  assert.equal(t.hiddenAct, 'silu');
  assert.equal(t.torchDtype, 'float16');
  assert.equal(t.slidingWindow, null);
  assert.deepEqual(t.layerTypes, ['full_attention', 'full_attention', 'full_attention']);
  assert.equal(c.imageTokenIndex, 32000);
  assert.equal(c.padTokenId, 32001);
  assert.equal(c.visionFeatureLayer, -2);
  assert.deepEqual(c.visionFeatureHiddenStateIndices, [2]);
  assert.equal(c.visionFeatureSelectStrategy, 'default');
  assert.equal(c.imageSeqLength, 64);
  assert.equal(c.projectorHiddenAct, 'gelu');
  assert.equal(c.multimodalProjectorBias, true);
  assert.equal(c.torchDtype, 'float16');
});

test('qwen2-tiny: qwen2 with qkv bias, tied embeddings and rope_theta 1e6', () => {
  const { textFacts, imageFacts, ...c } = loadConfig(fixture('qwen2-tiny')).config as CausalLmConfig;
  assert.deepEqual([textFacts, imageFacts], [{ vocabSize: 2048, contextWindow: 32768, eosTokenIds: [1], contextField: 'max_position_embeddings' }, null]);
  assert.deepEqual(c, {
    modelType: 'qwen2',
    hiddenSize: 64,
    intermediateSize: 160,
    numHiddenLayers: 3,
    numAttentionHeads: 4,
    numKeyValueHeads: 2,
    headDim: 16,
    vocabSize: 2048,
    maxPositionEmbeddings: 32768,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    ropeScaling: null,
    tieWordEmbeddings: true,
    attentionBias: { qkv: true, o: false },
    mlpBias: false,
    hiddenAct: 'silu',
    bosTokenId: 0,
    eosTokenId: [1],
    torchDtype: 'bfloat16',
    slidingWindow: null,
    layerTypes: ['full_attention', 'full_attention', 'full_attention'],
  });
});

test('siglip-tiny: a SigLIP tower alone is parsed, and refused as not runnable by itself', async () => {
  const dir = fixture('siglip-tiny');
  const { family, config } = loadConfig(dir);
  assert.equal(family.name, 'siglip-vision');
  const c = config as SiglipTowerConfig;
  assert.deepEqual(
    [
      c.modelType,
      c.hiddenSize,
      c.intermediateSize,
      c.numHiddenLayers,
      c.numAttentionHeads,
      c.imageSize,
      c.patchSize,
      c.layerNormEps,
      c.hiddenAct,
      c.torchDtype,
    ],
    ['siglip_vision_model', 64, 128, 3, 4, 112, 16, 1e-6, 'gelu_pytorch_tanh', 'float32'],
  );
  await assert.rejects(
    VisionLanguageModel.load(dir, { backend: new MetaBackend() }),
    /model_type "siglip_vision_model" is a vision encoder alone; load a VLM that contains it/,
  );
});

test('smolvlm-tiny: idefics3 parses; a scale_factor that does not divide the patch grid is named', () => {
  const { family, config } = loadConfig(fixture('smolvlm-tiny'));
  const c = config as Idefics3Config;
  assert.equal(family.name, 'idefics3');
  assert.deepEqual(
    [c.vision.modelType, c.vision.imageSize, c.vision.patchSize, c.scaleFactor, c.imageTokenId, c.text.numHiddenLayers, c.imageFacts.minTokens],
    ['idefics3_vision', 64, 16, 2, 49190, 2, 4],
  );
  const json = readFixtureJson('smolvlm-tiny');
  rejects({ ...json, scale_factor: 3 }, "scale_factor: 3 does not divide the tile's 4×4 patch grid");
});

test('defaults follow transformers', () => {
  const c = parseConfig(llama({ torch_dtype: 'float16', head_dim: null, num_key_value_heads: null }), 'x.json').config as CausalLmConfig;
  assert.equal(c.numKeyValueHeads, 4);
  assert.equal(c.headDim, 16);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.maxPositionEmbeddings, 2048);
  assert.equal(c.bosTokenId, 1);
  assert.deepEqual(c.eosTokenId, [2]);
  assert.equal(c.torchDtype, 'float16');
  assert.equal(c.tieWordEmbeddings, false);
  assert.deepEqual(c.attentionBias, { qkv: false, o: false });

  const d = parseConfig(llama({ eos_token_id: [128001, 128009], bos_token_id: null, attention_bias: true, mlp_bias: true }), 'x.json').config as CausalLmConfig;
  assert.deepEqual(d.eosTokenId, [128001, 128009]);
  assert.equal(d.bosTokenId, undefined);
  assert.deepEqual(d.attentionBias, { qkv: true, o: true });
  assert.equal(d.mlpBias, true);

  const q = parseConfig({ ...llama(), model_type: 'qwen2' }, 'x.json').config as CausalLmConfig;
  assert.equal(q.maxPositionEmbeddings, 32768);
  assert.equal(q.bosTokenId, undefined);
  assert.deepEqual(q.eosTokenId, []);
  assert.deepEqual(q.attentionBias, { qkv: true, o: false });
});

test('qwen2 sliding window and transformers-5 rope_parameters', () => {
  const q = parseConfig(
    { ...llama({ num_hidden_layers: 4 }), model_type: 'qwen2', use_sliding_window: true, sliding_window: 512, max_window_layers: 2 },
    'x.json',
  ).config as CausalLmConfig;
  assert.equal(q.slidingWindow, 512);
  assert.deepEqual(q.layerTypes, ['full_attention', 'full_attention', 'sliding_attention', 'sliding_attention']);

  const plain = parseConfig(llama({ rope_parameters: { rope_type: 'default', rope_theta: 500000 } }), 'x.json').config as CausalLmConfig;
  assert.equal(plain.ropeTheta, 500000);
  assert.equal(plain.ropeScaling, null);
  const scaled = { rope_type: 'llama3', rope_theta: 500000, factor: 8 };
  const s = parseConfig(llama({ rope_parameters: scaled }), 'x.json').config as CausalLmConfig;
  assert.deepEqual(s.ropeScaling, scaled);
  const old = parseConfig(llama({ rope_scaling: { type: 'linear', factor: 2 } }), 'x.json').config as CausalLmConfig;
  assert.deepEqual(old.ropeScaling, { type: 'linear', factor: 2 });
});

test('llava: nested model types default to clip_vision_model / llama; feature layer lists', () => {
  const base = readFixtureJson('llava-tiny');
  const vision = { ...(base['vision_config'] as object), model_type: undefined };
  const text = { ...(base['text_config'] as object), model_type: undefined };
  const c = parseConfig(
    {
      ...base,
      vision_config: vision,
      text_config: text,
      vision_feature_layer: [-1, 0, 3],
      vision_feature_select_strategy: 'full',
      image_token_index: undefined,
      image_token_id: 5,
    },
    'x.json',
  ).config as LlavaConfig;
  assert.equal(c.vision.modelType, 'clip_vision_model');
  assert.equal(c.text.modelType, 'llama');
  assert.deepEqual(c.visionFeatureLayer, [-1, 0, 3]);
  assert.deepEqual(c.visionFeatureHiddenStateIndices, [3, 0, 3]);
  assert.equal(c.visionFeatureSelectStrategy, 'full');
  assert.equal(c.imageTokenIndex, 5);
});

test('clip_vision_model at top level', () => {
  const vision = readFixtureJson('llava-tiny')['vision_config'] as Record<string, unknown>;
  const c = parseConfig(vision, 'x.json').config as ClipTowerConfig;
  assert.equal(c.modelType, 'clip_vision_model');
  assert.equal(c.patchSize, 14);
  assert.equal(c.torchDtype, undefined);
});

// ---- errors: each names the file, the JSON path of the field and what was expected ----

test('error: missing required field', () => {
  const { vocab_size: _, ...noVocab } = readFixtureJson('qwen2-tiny');
  rejects(noVocab, 'vocab_size: expected a positive integer, found nothing (field is missing)');
  const base = readFixtureJson('llava-tiny');
  const { num_attention_heads: __, ...text } = base['text_config'] as Record<string, unknown>;
  rejects({ ...base, text_config: text }, 'text_config.num_attention_heads: expected a positive integer');
  rejects({ ...base, vision_config: undefined }, 'vision_config: expected an object, found nothing');
  rejects({ ...llama(), hidden_size: null }, 'hidden_size: expected a positive integer, found null');
});

test('error: wrong type', () => {
  rejects({ ...readFixtureJson('qwen2-tiny'), hidden_size: '64' }, 'hidden_size: expected a positive integer, found string "64"');
  rejects(llama({ num_hidden_layers: 2.5 }), 'num_hidden_layers: expected a positive integer, found number 2.5');
  rejects(llama({ rms_norm_eps: -1 }), 'rms_norm_eps: expected a positive number');
  rejects(llama({ tie_word_embeddings: 'yes' }), 'tie_word_embeddings: expected true or false');
  rejects(llama({ eos_token_id: ['2'] }), 'eos_token_id: expected a non-negative integer or an array of them');
  rejects(llama({ rope_scaling: 'linear' }), 'rope_scaling: expected an object');
  const base = readFixtureJson('llava-tiny');
  rejects(
    { ...base, vision_config: { ...(base['vision_config'] as object), patch_size: [14] } },
    'vision_config.patch_size: expected a positive integer, found an array',
  );
  rejects({ ...base, text_config: 'llama' }, 'text_config: expected an object, found string "llama"');
});

test('error: unknown model type lists the supported ones', () => {
  rejects({ ...llama(), model_type: 'gpt2' }, 'model_type: "gpt2" is not supported; supported here: llava, clip_vision_model, llama, qwen2');
  rejects({ ...llama(), model_type: undefined }, 'model_type: expected a string naming the model type');
  rejects(
    { ...llama(), architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' },
    `(architectures GPT2LMHeadModel is not one of ${FAMILIES.flatMap((f) => f.architectures).join(', ')})`,
  );
  const base = readFixtureJson('llava-tiny');
  rejects(
    { ...base, text_config: { ...(base['text_config'] as object), model_type: 'mistral' } },
    'text_config.model_type: "mistral" is not supported; supported here: llama, qwen2',
  );
  rejects(
    { ...base, vision_config: { ...(base['vision_config'] as object), model_type: 'siglip_vision_model' } },
    'vision_config.model_type: "siglip_vision_model" is not supported (recognised',
  );
});

test('error: attention heads not divisible by kv heads', () => {
  rejects(llama({ num_key_value_heads: 3 }), 'num_attention_heads: 4 is not divisible by num_key_value_heads (3)');
  const base = readFixtureJson('llava-tiny');
  rejects(
    { ...base, text_config: { ...(base['text_config'] as object), num_key_value_heads: 3 } },
    'text_config.num_attention_heads: 4 is not divisible by text_config.num_key_value_heads (3)',
  );
});

test('error: hidden size not divisible by heads when head_dim is absent', () => {
  rejects(llama({ hidden_size: 66 }), 'hidden_size: 66 is not divisible by num_attention_heads (4)');
  const ok = parseConfig(llama({ hidden_size: 66, head_dim: 16 }), 'x.json').config as CausalLmConfig;
  assert.equal(ok.headDim, 16);
  const base = readFixtureJson('llava-tiny');
  rejects(
    { ...base, vision_config: { ...(base['vision_config'] as object), hidden_size: 66 } },
    'vision_config.hidden_size: 66 is not divisible by vision_config.num_attention_heads (4)',
  );
});

test('error: llava vision feature settings', () => {
  const base = readFixtureJson('llava-tiny');
  rejects({ ...base, vision_feature_select_strategy: 'cls' }, 'vision_feature_select_strategy: expected "default" or "full", found "cls"');
  rejects({ ...base, vision_feature_layer: -5 }, 'vision_feature_layer: -5 is outside [-4, 3]', '3 layers');
  rejects({ ...base, vision_feature_layer: [0, 4] }, 'vision_feature_layer: 4 is outside [-4, 3]');
  rejects({ ...base, vision_feature_layer: 'last' }, 'vision_feature_layer: expected an integer or a non-empty array');
});

test('error: unreadable or non-object config', () => {
  const dir = tempDir('sparsevila-cfg-');
  assert.throws(
    () => loadConfig(dir),
    (e: unknown) => e instanceof ConfigError && e.message.startsWith(`${path.join(dir, 'config.json')}: cannot open the model config: no such file`),
  );
  rejects([1, 2], 'expected a JSON object, found an array');
});

// The default model's folder layout: the engine loads it like a downloaded llava-hf checkpoint,
// its word-level tokenizer covers every question and answer of the task, and the weights fit.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { TextTokenizer } from '../src/io/tokenizer.js';
import { IMAGE_TOKEN_ID, taskVocabulary, words, writeTaskModel } from '../src/data/task-model.js';
import { makeScene, renderScene, splitSeeds } from '../src/data/scenes.js';
import { tempDir } from './helpers.js';

describe('task model layout', () => {
  let be: WasmBackend;
  let dir: string;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
    dir = tempDir();
    writeTaskModel(dir, { seed: 5 });
  });
  after(async () => {
    await be.close();
  });

  it('the tokenizer covers every question and answer (no unknown token) and decodes answers back', () => {
    const tok = TextTokenizer.fromDir(dir);
    const unk = tok.tokenToId('<unk>');
    assert.equal(tok.tokenToId('<image>'), IMAGE_TOKEN_ID);
    assert.equal(new Set(taskVocabulary()).size, taskVocabulary().length);
    for (const seed of splitSeeds('test', 100)) {
      for (const q of makeScene(seed).episode) {
        const ids = tok.encode(`USER: <image>\n${q.question} ASSISTANT: ${q.answer}</s>`);
        assert.ok(!ids.includes(unk!), `unknown word in "${q.question}" / "${q.answer}"`);
        assert.equal(ids[0], tok.bosTokenId);
        assert.equal(tok.decode(tok.encode(q.answer), { skipSpecialTokens: true }), words(q.answer).join(' '));
      }
    }
  });

  it('loads as a llava checkpoint and answers about a scene (random weights: the pipeline, not the answer)', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const img = path.join(dir, 'scene.png');
    writeFileSync(img, await renderScene(makeScene(splitSeeds('test', 1)[0])));
    const r = await model.generate({ images: [img], prompt: 'What colour is the circle in the centre?' }, { maxNewTokens: 3, eosTokenIds: [] });
    assert.equal(r.stats.imageTokens, 256);
    assert.equal(r.ids.length, 3);
    // The template's rendering: "USER: <image>\n<question> ASSISTANT:" with <s> first.
    const ids = await model.promptIds({ images: [img], prompt: 'Is there a red circle?' });
    assert.deepEqual(ids.slice(0, 4), [1, model.tokenizer!.tokenToId('user'), model.tokenizer!.tokenToId(':'), IMAGE_TOKEN_ID]);
    assert.equal(ids.filter((t) => t === IMAGE_TOKEN_ID).length, 256);
    await model.close();
  });

  it('its f32 weights stay under the 30 MB the repository allows', () => {
    assert.ok(statSync(path.join(dir, 'model.safetensors')).size < 30 * 2 ** 20);
  });
});

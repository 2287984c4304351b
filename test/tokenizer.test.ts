import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TextTokenizer, TokenizerError, mergeEosTokenIds } from '../src/io/tokenizer.js';
import { fixture, llavaGoldenPrompt, tempDir } from './helpers.js';

const LLAVA = fixture('llava-tiny');
const SMOL = fixture('smolvlm-tiny');

const llavaPrompt = llavaGoldenPrompt();

/** A fresh folder holding copies of `files` from `from`, plus `extra` files written as given. */
function tempModel(from: string, files: string[], extra: Record<string, string> = {}): string {
  const dir = tempDir('sparsevila-tok-');
  for (const f of files) fs.copyFileSync(path.join(from, f), path.join(dir, f));
  for (const [f, text] of Object.entries(extra)) fs.writeFileSync(path.join(dir, f), text);
  return dir;
}

/** Streams `ids` one by one; checks the pieces concatenate to decode(ids) and returns the pieces. */
function streamAll(tok: TextTokenizer, ids: number[], skipSpecialTokens: boolean): string[] {
  const s = tok.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => s.push(id));
  pieces.push(s.flush());
  assert.equal(pieces.join(''), tok.decode(ids, { skipSpecialTokens }), `stream of ${JSON.stringify(ids)}`);
  assert.equal(s.text, pieces.join(''));
  assert.deepEqual(s.ids, ids);
  for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has U+FFFD`);
  return pieces;
}

// ---- llava-tiny (Llama SentencePiece BPE with byte fallback) ------------------------------------

test('llava-tiny: special ids, vocabulary, lookups', () => {
  const tok = TextTokenizer.fromDir(LLAVA);
  assert.equal(tok.bosTokenId, 1);
  assert.deepEqual(tok.eosTokenIds, [2]);
  assert.equal(tok.padTokenId, 32001);
  assert.equal(tok.vocabSize, 32002);
  assert.equal(tok.tokenToId('<image>'), 32000);
  assert.equal(tok.idToToken(32000), '<image>');
  assert.equal(tok.idToToken(1), '<s>');
  assert.equal(tok.tokenToId('▁Hello'), 15043);
  assert.equal(tok.tokenToId('no-such-token'), undefined);
  assert.equal(tok.idToToken(999999), undefined);
  assert.equal(tok.idToToken(-1), undefined);
  assert.ok(tok.isSpecialId(32000) && tok.isSpecialId(1) && !tok.isSpecialId(15043));
  assert.ok(tok.isEos(2) && !tok.isEos(1));
});

test('llava-tiny: the expanded golden prompt encodes to the golden input_ids exactly', () => {
  const tok = TextTokenizer.fromDir(LLAVA);
  const ids = tok.encode(llavaPrompt.text_after_expansion);
  assert.equal(ids.length, 82);
  assert.deepEqual(ids, llavaPrompt.input_ids);
  assert.equal(ids.filter((i) => i === 32000).length, 64);
  // Without special tokens: the same minus the BOS.
  assert.deepEqual(tok.encode(llavaPrompt.text_after_expansion, { addSpecialTokens: false }), llavaPrompt.input_ids.slice(1));
  assert.deepEqual(tok.encode('Hello'), [1, 15043]);
  assert.deepEqual(tok.encode(''), [1]);
  assert.deepEqual(tok.encode('', { addSpecialTokens: false }), []);
});

test('llava-tiny: decode round-trips', () => {
  const tok = TextTokenizer.fromDir(LLAVA);
  const ids = llavaPrompt.input_ids;
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'USER: \nWhat is shown in this image? ASSISTANT:');
  const full = tok.decode(ids);
  assert.ok(full.startsWith('<s> USER: <image><image>'), full);
  assert.ok(full.endsWith('<image>\nWhat is shown in this image? ASSISTANT:'), full);
  assert.equal(full.split('<image>').length - 1, 64);
  for (const text of ['What is shown in this image?', 'héllo 👋 世界', 'Two  spaces,\ttab\nnewline.', 'x  ']) {
    assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: true }), text);
    assert.equal(tok.decode(tok.encode(text, { addSpecialTokens: false })), text);
  }
  // As in transformers (legacy=false Llama): a leading space merges into the prepended "▁" and is lost.
  assert.deepEqual(
    tok.encode(' x', { addSpecialTokens: false }).map((i) => tok.idToToken(i)),
    ['▁x'],
  );
  assert.equal(tok.decode(tok.encode('  x', { addSpecialTokens: false })), ' x');
  assert.equal(tok.decode([]), '');
  assert.equal(tok.decode([1], { skipSpecialTokens: true }), '');
  // Ids beyond the tokenizer (a padded embedding table) are skipped, like the Rust tokenizer does.
  assert.equal(tok.decode([15043, 40000]), 'Hello');
});

test('llava-tiny: byte-fallback tokens', () => {
  const tok = TextTokenizer.fromDir(LLAVA);
  const ids = tok.encode('héllo 👋 世界', { addSpecialTokens: false });
  const tokens = ids.map((i) => tok.idToToken(i));
  assert.deepEqual(tokens.slice(4, 8), ['<0xF0>', '<0x9F>', '<0x91>', '<0x8B>']); // 👋 = F0 9F 91 8B
});

test('llava-tiny: stream decoder output equals decode()', () => {
  const tok = TextTokenizer.fromDir(LLAVA);
  for (const skip of [false, true]) streamAll(tok, llavaPrompt.input_ids, skip);

  const ids = tok.encode('héllo 👋 世界', { addSpecialTokens: true });
  for (const skip of [false, true]) {
    const pieces = streamAll(tok, ids, skip);
    // ids: <s> ▁h él lo ▁ <0xF0> <0x9F> <0x91> <0x8B> ▁ 世 界: the emoji comes out whole, with its last byte.
    const byteStart = ids.indexOf(tok.tokenToId('<0xF0>')!);
    assert.deepEqual(pieces.slice(byteStart, byteStart + 4), ['', '', '', '👋']);
    assert.equal(pieces.slice(0, byteStart).join(''), skip ? 'héllo ' : '<s> héllo ');
  }

  // Leading-space rule: the first word loses its SentencePiece space, later ones keep it.
  const words = tok.encode('Hello world, again', { addSpecialTokens: false });
  const pieces = streamAll(tok, words, false);
  assert.equal(pieces[0], 'Hello');
  assert.ok(pieces.slice(1).join('').startsWith(' world'));

  // Special tokens in the middle, with and without skipping.
  const mixed = [...tok.encode('A cat', { addSpecialTokens: false }), 32000, 32000, ...tok.encode(' sits 🐈', { addSpecialTokens: false }), 2];
  for (const skip of [false, true]) streamAll(tok, mixed, skip);

  // A byte sequence that never completes is flushed at the end as U+FFFD, as decode() renders it.
  const s = tok.createStreamDecoder();
  const broken = [15043, tok.tokenToId('<0xF0>')!, tok.tokenToId('<0x9F>')!];
  const out = broken.map((id) => s.push(id)).join('') + s.flush();
  assert.equal(out, tok.decode(broken));
  assert.ok(out.endsWith('\uFFFD'));
});

test('tokenizer_config add_bos_token overrides the post-processor', () => {
  const noBos = tempModel(LLAVA, ['tokenizer.json'], {
    'tokenizer_config.json': JSON.stringify({ bos_token: '<s>', eos_token: '</s>', add_bos_token: false, added_tokens_decoder: {} }),
  });
  const tok = TextTokenizer.fromDir(noBos);
  assert.deepEqual(tok.encode('Hello'), [15043]);
  const withEos = tempModel(LLAVA, ['tokenizer.json'], {
    'tokenizer_config.json': JSON.stringify({ bos_token: '<s>', eos_token: '</s>', add_eos_token: true, added_tokens_decoder: {} }),
  });
  assert.deepEqual(TextTokenizer.fromDir(withEos).encode('Hello'), [1, 15043, 2]);
  assert.deepEqual(TextTokenizer.fromDir(withEos).encode('Hello', { addSpecialTokens: false }), [15043]);
});

test('added_tokens.json, special_tokens_map.json and generation_config.json are honoured', () => {
  const dir = tempModel(LLAVA, ['tokenizer.json'], {
    // A legacy config: special tokens come from special_tokens_map.json.
    'tokenizer_config.json': JSON.stringify({ add_bos_token: true }),
    'special_tokens_map.json': JSON.stringify({
      bos_token: { content: '<s>' },
      eos_token: '</s>',
      additional_special_tokens: ['<extra>'],
    }),
    'added_tokens.json': JSON.stringify({ '<extra>': 32002 }),
    'generation_config.json': JSON.stringify({ eos_token_id: [32002, 2] }),
  });
  const tok = TextTokenizer.fromDir(dir);
  assert.equal(tok.tokenToId('<extra>'), 32002);
  assert.equal(tok.vocabSize, 32003);
  assert.equal(tok.bosTokenId, 1);
  assert.deepEqual(tok.eosTokenIds, [2, 32002]);
  const ids = tok.encode('Hi<extra>there');
  assert.ok(ids.includes(32002), JSON.stringify(ids));
  assert.equal(ids[0], 1);
  assert.ok(tok.isSpecialId(32002));
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'Hithere');

  const noGen = TextTokenizer.fromDir(dir, { readGenerationConfig: false, extraEosTokenIds: 7 });
  assert.deepEqual(noGen.eosTokenIds, [2, 7]);
});

test('mergeEosTokenIds', () => {
  assert.deepEqual(mergeEosTokenIds(2, [2, 32000], undefined, null, 5), [2, 32000, 5]);
  assert.deepEqual(mergeEosTokenIds(), []);
  assert.deepEqual(mergeEosTokenIds(undefined, [49279]), [49279]);
  assert.throws(() => mergeEosTokenIds(1.5), TokenizerError);
  assert.throws(() => mergeEosTokenIds([-1]), TokenizerError);
});

// ---- smolvlm-tiny (GPT-2-style byte-level BPE, no post-processor) ---------------------------------

const SMOL_IDS = [
  1, 11126, 42, 49189, 49153, 49190, 49190, 49190, 49190, 49189, 49154, 49190, 49190, 49190, 49190, 198, 49189, 49159, 49190, 49190, 49190, 49190, 49189, 49160,
  49190, 49190, 49190, 49190, 1116, 49189, 49152, 49190, 49190, 49190, 49190, 49189, 1780, 314, 281, 451, 2443, 47, 49279, 198, 9519, 9531, 42,
];
const tile = (tag: string): string => `<fake_token_around_image>${tag}${'<image>'.repeat(4)}`;
const SMOL_EXPANDED =
  '<|im_start|>User:' +
  tile('<row_1_col_1>') +
  tile('<row_1_col_2>') +
  '\n' +
  tile('<row_2_col_1>') +
  tile('<row_2_col_2>') +
  '\n' +
  '\n' +
  tile('<global-img>') +
  '<fake_token_around_image>' +
  'What is in this image?<end_of_utterance>\nAssistant:';

test('smolvlm-tiny: the expanded prompt encodes to the golden 47 ids with tokenizer.json alone', () => {
  const tok = TextTokenizer.fromDir(SMOL);
  const ids = tok.encode(SMOL_EXPANDED);
  assert.equal(ids.length, 47);
  assert.deepEqual(ids, SMOL_IDS);
  assert.equal(tok.bosTokenId, 1); // <|im_start|>, but the post-processor adds nothing
  assert.deepEqual(tok.encode('Hi', { addSpecialTokens: true }), tok.encode('Hi', { addSpecialTokens: false }));
  assert.ok(tok.eosTokenIds.includes(49279));
  assert.equal(tok.vocabSize, 49280);
  assert.equal(tok.decode(ids), SMOL_EXPANDED);
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }).startsWith('User:'), true);
});

test('smolvlm-tiny: stream decoder on byte-level pieces', () => {
  const tok = TextTokenizer.fromDir(SMOL);
  for (const skip of [false, true]) streamAll(tok, SMOL_IDS, skip);
  const text = 'héllo 👋 世界 — naïve café 🐈‍⬛!';
  const ids = tok.encode(text);
  assert.equal(tok.decode(ids), text);
  const pieces = streamAll(tok, ids, false);
  assert.equal(pieces.join(''), text);
});

// ---- errors ----------------------------------------------------------------------------------------

test('missing or invalid tokenizer.json is a TokenizerError naming the file', () => {
  const empty = tempModel(LLAVA, ['tokenizer_config.json']);
  const file = path.join(empty, 'tokenizer.json');
  assert.throws(
    () => TextTokenizer.fromDir(empty),
    (e: unknown) => {
      assert.ok(e instanceof TokenizerError, String(e));
      assert.ok(e.message.includes(file), e.message);
      return true;
    },
  );
  const bad = tempModel(LLAVA, [], { 'tokenizer.json': '{"model": ' });
  assert.throws(
    () => TextTokenizer.fromDir(bad),
    (e: unknown) => e instanceof TokenizerError && e.message.includes(path.join(bad, 'tokenizer.json')) && /invalid JSON/.test(e.message),
  );
  const noModel = tempModel(LLAVA, [], { 'tokenizer.json': '{"version": "1.0"}' });
  assert.throws(
    () => TextTokenizer.fromDir(noModel),
    (e: unknown) => e instanceof TokenizerError && e.message.includes(path.join(noModel, 'tokenizer.json')),
  );
  const badModel = tempModel(LLAVA, [], { 'tokenizer.json': '{"model": {"type": "Nope"}, "added_tokens": []}' });
  assert.throws(
    () => TextTokenizer.fromDir(badModel),
    (e: unknown) => e instanceof TokenizerError && e.message.includes(path.join(badModel, 'tokenizer.json')),
  );
});

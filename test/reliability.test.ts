// Bad input, one class of defect at a time (issue "Trustworthy under bad input"): every input is
// made here, from the default model's folder, llava-tiny and the sample scenes. Each class is fixed
// by one mechanism; these tests hold it to its rule. The seeded fuzz test (fuzz.test.ts) covers the
// same ground at random.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { inspectModel } from '../src/engine/inspect.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { InputError } from '../src/base/errors.js';
import { ChatTemplateError } from '../src/io/chat-template.js';
import { WeightError } from '../src/model/weights.js';
import { ImageError } from '../src/io/image-types.js';
import { readEpisodes, evaluate } from '../src/eval/harness.js';
import { fixture, tempDir, modelVariant, replaceFile, editJson, pngDeclaring } from './helpers.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const samples = fileURLToPath(new URL('../../samples/scenes', import.meta.url));
const IMAGE = path.join(samples, '3000001.png');
const QUESTION = 'What colour is the triangle in the top middle?';
const runCli = (args: string[], input?: string) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input, timeout: 60_000 });

/** The default model's folder with its safetensors header rewritten by `edit`. */
function withHeader(dir: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): void {
  const b = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;
  edit(h);
  const json = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  replaceFile(dir, 'model.safetensors', Buffer.concat([len, json, b.subarray(8 + n)]));
}

let be: WasmBackend;
before(async () => {
  be = await WasmBackend.create({ threads: 2 });
});
after(async () => {
  await be.close();
});

describe('class 1: no silent wrong answers', () => {
  it('a chat template that fails to parse, render or read is an error naming the file and the template\'s message, never "no template"', async () => {
    const broken = modelVariant(DEFAULT_MODEL_DIR, (d) => replaceFile(d, 'chat_template.jinja', '{% for m in messages %}{{ m.role }'));
    await assert.rejects(
      VisionLanguageModel.load(broken, { backend: be }),
      (e: Error) =>
        e instanceof ChatTemplateError && e.message.includes(path.join(broken, 'chat_template.jinja')) && /cannot parse the chat template: /.test(e.message),
    );
    const raising = modelVariant(DEFAULT_MODEL_DIR, (d) => replaceFile(d, 'chat_template.jinja', "{{ raise_exception('roles must alternate') }}"));
    await assert.rejects(VisionLanguageModel.load(raising, { backend: be }), /chat_template\.jinja: cannot render the chat template: roles must alternate/);
    const badJson = modelVariant(DEFAULT_MODEL_DIR, (d) => {
      replaceFile(d, 'chat_template.jinja', null);
      replaceFile(d, 'chat_template.json', '{"chat_template": "{{ x }}');
    });
    await assert.rejects(
      VisionLanguageModel.load(badJson, { backend: be }),
      (e: Error) => e instanceof ChatTemplateError && e.message.includes('chat_template.json: invalid JSON'),
    );
    const noImage = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      replaceFile(
        d,
        'chat_template.jinja',
        "{% for m in messages %}{{ m.role.upper() }}: {% for c in m.content if c.type == 'text' %}{{ c.text }}{% endfor %}{% endfor %}ASSISTANT:",
      ),
    );
    await assert.rejects(VisionLanguageModel.load(noImage, { backend: be }), /placed 0 image placeholders "<image>"/);
  });

  it('with no chat template at all, loading says once which layout prompts use', async () => {
    const none = modelVariant(DEFAULT_MODEL_DIR, (d) => replaceFile(d, 'chat_template.jinja', null));
    const warnings: string[] = [];
    const m = await VisionLanguageModel.load(none, { backend: be, onWarning: (w) => warnings.push(w) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /no chat template .* prompts use the plain layout, one image placeholder and a newline per image/);
    assert.deepEqual(m.warnings, warnings);
    assert.equal(m.promptText({ images: [IMAGE], prompt: 'hi' }), '<image>\nhi');
    await m.close();
  });

  it('every tensor of the checkpoint is used or known: fewer layers in the config, or a stray tensor, is an error listing them', async () => {
    const fewer = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'config.json', (j) => {
        j.text_config.num_hidden_layers = 3;
      }),
    );
    await assert.rejects(
      VisionLanguageModel.load(fewer, { backend: be }),
      (e: Error) =>
        e instanceof WeightError &&
        /9 tensors of the weights are not used/.test(e.message) &&
        e.message.includes('"language_model.model.layers.3.mlp.down_proj.weight"'),
    );
    const stray = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      withHeader(d, (h) => {
        h['language_model.extra_head.weight'] = { dtype: 'BF16', shape: [0], data_offsets: [0, 0] };
      }),
    );
    await assert.rejects(VisionLanguageModel.load(stray, { backend: be }), /1 tensor of the weights is not used .*"language_model\.extra_head\.weight"/);
    // One more vision layer declared than stored would move the feature layer (it counts from the end).
    const moreVision = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'config.json', (j) => {
        j.vision_config.num_hidden_layers = 5;
      }),
    );
    await assert.rejects(VisionLanguageModel.load(moreVision, { backend: be }), /needs tensor "vision_tower\.vision_model\.encoder\.layers\.4\./);
    // Known on purpose: a RoPE buffer of older checkpoints, and lm_head under tied embeddings (as transformers ties them).
    const known = modelVariant(DEFAULT_MODEL_DIR, (d) => {
      withHeader(d, (h) => {
        h['language_model.model.layers.0.self_attn.rotary_emb.inv_freq'] = { dtype: 'F32', shape: [0], data_offsets: [0, 0] };
      });
      editJson(d, 'config.json', (j) => {
        j.text_config.tie_word_embeddings = true;
      });
    });
    const r = await inspectModel(known);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(r.skipped.map((s) => s.name).sort(), ['language_model.lm_head.weight', 'language_model.model.layers.0.self_attn.rotary_emb.inv_freq']);
  });

  it('inputIds are checked: integers, ids of the vocabulary, as many image placeholders as visual tokens', async () => {
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    try {
      const ids = await m.promptIds({ images: [IMAGE], prompt: QUESTION });
      await assert.rejects(
        m.generate({ images: [IMAGE], inputIds: ids.map((t, i) => (i === 3 ? 5.5 : t)) }, { maxNewTokens: 1 }),
        /inputIds\[3\] is number 5\.5: token ids are integers in \[0, 72\)/,
      );
      await assert.rejects(m.generate({ images: [IMAGE], inputIds: [...ids, 999] }, { maxNewTokens: 1 }), /inputIds\[\d+\] is number 999/);
      await assert.rejects(
        m.generate({ images: [IMAGE], inputIds: ids.map(String) as unknown as number[] }, { maxNewTokens: 1 }),
        /inputIds\[0\] is the string "1"/,
      );
      const cut = ids.slice(0, 100),
        held = cut.filter((t) => t === 4).length;
      await assert.rejects(
        m.generate({ images: [IMAGE], inputIds: cut }, { maxNewTokens: 1 }),
        new RegExp(`inputIds hold ${held} image placeholder ids \\(4\\) but the images give 256 visual tokens`),
      );
      const r = await m.generate({ images: [IMAGE], inputIds: ids }, { maxNewTokens: 2 });
      assert.equal(r.text, 'yellow');
    } finally {
      await m.close();
    }
  });
});

describe('class 2: sizes from files or flags are bounded', () => {
  it('generation stops at the context window (finish "context") however many tokens are asked for, with lists that grow with use', async () => {
    const small = modelVariant(fixture('llava-tiny'), (d) =>
      editJson(d, 'config.json', (j) => {
        j.text_config.max_position_embeddings = 160;
      }),
    );
    const m = await VisionLanguageModel.load(small, { backend: be });
    try {
      const req = { images: [path.join(fixture('llava-tiny'), 'image.png')], prompt: 'What is shown?' };
      for (const opts of [{}, { decodeSparsity: 0.5 }, { prefillSparsity: 0.5, decodeSparsity: 0.75 }]) {
        const r = await m.generate(req, { maxNewTokens: 1e9, eosTokenIds: [], ...opts });
        assert.equal(r.finishReason, 'context');
        assert.equal(r.stats.promptTokens + r.ids.length, 160);
      }
      // The same answer as asking for exactly what fits: the decode lists grew as the answer did.
      const once = await m.generate(req, { maxNewTokens: 1e9, eosTokenIds: [], decodeSparsity: 0.5 });
      const sized = await m.generate(req, { maxNewTokens: once.ids.length, eosTokenIds: [], decodeSparsity: 0.5 });
      assert.deepEqual(once.ids, sized.ids);
    } finally {
      await m.close();
    }
  });

  it('a huge max_position_embeddings costs nothing until used, and answers as before', async () => {
    const huge = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'config.json', (j) => {
        j.text_config.max_position_embeddings = 2 ** 40;
      }),
    );
    const m = await VisionLanguageModel.load(huge, { backend: be });
    try {
      assert.equal((await m.generate({ images: [IMAGE], prompt: QUESTION }, { maxNewTokens: 4 })).text, 'yellow');
    } finally {
      await m.close();
    }
  });

  it('image bytes and pixels are bounded before decoding, configurably, and the message names the file and the limit', async () => {
    const dir = tempDir();
    // A valid PNG header declaring 100000 x 100000 pixels over 5 kB of data.
    const liar = path.join(dir, 'liar.png');
    fs.writeFileSync(liar, pngDeclaring(IMAGE, 100000, 100000));
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    const small = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be, imageLimits: { maxBytes: 1000 } });
    try {
      const t0 = performance.now();
      await assert.rejects(
        m.generate({ images: [liar], prompt: 'hi' }),
        (e: Error) =>
          e instanceof ImageError &&
          e.message.startsWith(
            `${liar}: the image is 100000×100000 = 10000.0 megapixels, more than the 67.1 megapixels allowed (the image limit maxPixels; --max-image-pixels)`,
          ),
      );
      assert.ok(performance.now() - t0 < 2000);
      await assert.rejects(
        small.generate({ images: [IMAGE], prompt: 'hi' }),
        /3000001\.png: the image has \d+ bytes, more than the 1000 allowed \(the image limit maxBytes; --max-image-bytes\)/,
      );
      // A legal but extreme aspect ratio: the processor's resize target is bounded too.
      const thin = path.join(dir, 'thin.png');
      await sharp({ create: { width: 1, height: 5000, channels: 3, background: '#808080' } })
        .png()
        .toFile(thin);
      await assert.rejects(
        m.generate({ images: [thin], prompt: 'hi' }),
        /thin\.png: resizing the 1×5000 image as the processor's "size" asks gives 224×1120000/,
      );
    } finally {
      await m.close();
      await small.close();
    }
    const r = runCli(['run', '--image', IMAGE, '--prompt', QUESTION, '--max-image-pixels', '1000']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /the image limit maxPixels of 1000 pixels \(--max-image-pixels\)/);
  });

  it('sizes read from configs are checked against the weights and the kernels, naming the field', async () => {
    const size = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'preprocessor_config.json', (j) => {
        j.size = { shortest_edge: 1_000_000 };
      }),
    );
    await assert.rejects(VisionLanguageModel.load(size, { backend: be }), /preprocessor_config\.json: size resizes images to 1000000×1000000/);
    const head = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'config.json', (j) => {
        j.text_config.head_dim = 320;
      }),
    );
    await assert.rejects(
      VisionLanguageModel.load(head, { backend: be }),
      /head dimension \(head_dim, or hidden_size \/ num_attention_heads, in config\.json\) is 320; the attention kernels take multiples of 4 up to 256/,
    );
    const context = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      editJson(d, 'config.json', (j) => {
        j.text_config.max_position_embeddings = 200;
      }),
    );
    await assert.rejects(VisionLanguageModel.load(context, { backend: be }), /max_position_embeddings 200 cannot hold one image: it takes 256 visual tokens/);
  });

  it('threads beyond the cores are capped with a notice', async () => {
    const warnings: string[] = [];
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 4096, onWarning: (w) => warnings.push(w) });
    try {
      assert.ok(m.backend.threads <= (await import('node:os')).availableParallelism());
      assert.match(warnings.join('\n'), /threads 4096 is more than this machine's \d+ cores: using \d+/);
    } finally {
      await m.close();
    }
  });
});

describe('class 3: inputs that never end', () => {
  it('only regular files are read: a FIFO, a device or a folder is refused at once, naming it', async () => {
    const dir = tempDir();
    const fifo = path.join(dir, 'pipe.png');
    spawnSync('mkfifo', [fifo]);
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    try {
      await assert.rejects(m.generate({ images: [fifo], prompt: 'hi' }), /pipe\.png: the image is a named pipe \(FIFO\), not a regular file/);
      await assert.rejects(m.generate({ images: ['/dev/zero'], prompt: 'hi' }), /\/dev\/zero: the image is a character device, not a regular file/);
      await assert.rejects(m.generate({ images: [dir], prompt: 'hi' }), /the image is a folder, not a regular file/);
    } finally {
      await m.close();
    }
    const cfg = modelVariant(DEFAULT_MODEL_DIR, (d) => {
      replaceFile(d, 'config.json', null);
      spawnSync('mkfifo', [path.join(d, 'config.json')]);
    });
    await assert.rejects(VisionLanguageModel.load(cfg, { backend: be }), /config\.json: the model config is a named pipe \(FIFO\), not a regular file/);
    const r = runCli(['run', '--image', fifo, '--prompt', 'hi']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--image .*pipe\.png: the image is a named pipe/);
  });

  it('a chat template that loops, recurses or grows without end stops within its budget', async () => {
    for (const [src, why] of [
      ['{% for a in range(90000) %}{% for b in range(90000) %}{% endfor %}{% endfor %}', /rendering took longer than 2000 ms/],
      ['{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}', /nested deeper than 400 levels/],
      ["{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", /a string grew past/],
      ['{{ range(10 ** 9) | length }}', /range\(\) of 1000000000 items/],
    ] as const) {
      const d = modelVariant(DEFAULT_MODEL_DIR, (x) => replaceFile(x, 'chat_template.jinja', src));
      const t0 = performance.now();
      await assert.rejects(VisionLanguageModel.load(d, { backend: be }), (e: Error) => e instanceof ChatTemplateError && why.test(e.message));
      assert.ok(performance.now() - t0 < 6000, `${src}: ${performance.now() - t0} ms`);
    }
  });

  it('output folders the system will not create are refused with the path and the flag', () => {
    const t0 = performance.now();
    const r = runCli(['scenes', '--out', '/proc/sparsevila-scenes', '--count', '1']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--out \/proc\/sparsevila-scenes: cannot create the folder \/proc\/sparsevila-scenes/);
    assert.ok(performance.now() - t0 < 10_000);
    const file = path.join(tempDir(), 'a-file');
    fs.writeFileSync(file, 'x');
    const r2 = runCli(['scenes', '--out', path.join(file, 'sub'), '--count', '1']);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /--out .*a-file\/sub: .*a-file exists and is not a regular file|--out .*a-file\/sub: .*a-file exists and is .*not a folder/);
  });
});

describe('class 4: a chat that survives its user', () => {
  it('a question longer than the context window is refused and the chat goes on', () => {
    const r = runCli(['chat', '--image', IMAGE], `${QUESTION}\n${'red '.repeat(900)}\nIs there a red circle?\n`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /\[turn 1, eos\]/);
    assert.match(r.stderr, /sparsevila: the prompt has \d+ tokens, but the model's context window is 1024 tokens/);
    assert.match(r.stderr, /\[turn 2, eos\] prompt \d+ tokens, \d+ prefilled \| image from the session cache/);
    assert.deepEqual(
      r.stdout
        .trim()
        .split('\n')
        .filter((l) => l.trim()),
      ['yellow', 'yes'],
    );
  });

  it('when the history no longer fits, the oldest turns after the images are dropped and the turn says so', async () => {
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    const s = m.session([IMAGE], { mode: 'chat' });
    try {
      let dropped = 0;
      for (let i = 0; i < 70; i++) {
        const r = await s.ask(QUESTION, { maxNewTokens: 4 });
        // (The model was trained on episodes of up to six turns: its answers this deep may drift.)
        assert.equal(r.finishReason, 'eos', `turn ${i + 1}`);
        assert.ok(r.stats.promptTokens + 4 <= m.contextWindow);
        dropped += r.stats.historyTurnsDropped;
      }
      assert.ok(dropped > 0, 'some turns were dropped');
      assert.ok(s.turns < 70);
      assert.equal(s.encodes, 1);
    } finally {
      s.close();
      await m.close();
    }
  });

  it('output paths are checked before generating: a bad --heatmap ends nothing that started', () => {
    const r = runCli(['chat', '--image', IMAGE, '--heatmap', '/nonexistent-folder/look.png'], `${QUESTION}\n`);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /--heatmap \/nonexistent-folder\/look\.png: its folder \/nonexistent-folder cannot be used: no such file or folder/);
  });

  it('generate() and session.ask() take an AbortSignal: the answer stops between tokens and the session goes on', async () => {
    const m = await VisionLanguageModel.load(fixture('llava-tiny'), { backend: be });
    const image = path.join(fixture('llava-tiny'), 'image.png');
    try {
      const ac = new AbortController();
      let n = 0;
      const r = await m.generate(
        { images: [image], prompt: 'What is shown?' },
        {
          maxNewTokens: 500,
          eosTokenIds: [],
          signal: ac.signal,
          onToken: () => {
            if (++n === 3) setImmediate(() => ac.abort());
          },
        },
      );
      assert.equal(r.finishReason, 'abort');
      assert.ok(r.ids.length >= 3 && r.ids.length < 10, `${r.ids.length} tokens`);
      const s = m.session([image]);
      const ac2 = new AbortController();
      ac2.abort();
      const none = await s.ask('What is shown?', { signal: ac2.signal });
      assert.deepEqual([none.finishReason, none.ids.length, s.encodes], ['abort', 0, 0]);
      const full = await s.ask('What is shown?', { maxNewTokens: 3 });
      assert.equal(full.ids.length, 3);
      s.close();
    } finally {
      await m.close();
    }
  });

  it('generation yields between tokens, and overlapping calls and sessions give what they give one at a time', async () => {
    const m = await VisionLanguageModel.load(fixture('llava-tiny'), { backend: be });
    const image = path.join(fixture('llava-tiny'), 'image.png');
    const jobs = [
      () => m.generate({ images: [image], prompt: 'What is shown?' }, { maxNewTokens: 20, eosTokenIds: [] }),
      () => m.generate({ images: [image, image], prompt: 'Compare them.' }, { maxNewTokens: 15, eosTokenIds: [], prefillSparsity: 0.5, decodeSparsity: 0.75 }),
      () => m.generate({ prompt: 'Say something.' }, { maxNewTokens: 25, eosTokenIds: [], temperature: 0.8, seed: 3 }),
      async () => {
        const s = m.session([image], { mode: 'chat' });
        const a = await s.ask('What is shown?', { maxNewTokens: 10, eosTokenIds: [], decodeSparsity: 0.5 });
        const b = await s.ask('And then?', { maxNewTokens: 10, eosTokenIds: [] });
        s.close();
        return { ...b, ids: [...a.ids, ...b.ids] };
      },
    ];
    try {
      const alone = [];
      for (const j of jobs) alone.push((await j()).ids);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 0);
      const together = (await Promise.all(jobs.map((j) => j()))).map((r) => r.ids);
      clearInterval(timer);
      assert.deepEqual(together, alone);
      assert.ok(ticks > 3, `the event loop ran ${ticks} timers during generation`);
    } finally {
      await m.close();
    }
  });

  it('Ctrl-C in chat stops the answer and the next question is answered; at the prompt it ends the chat', async () => {
    const p = spawn(process.execPath, [
      cli,
      'chat',
      '--model',
      fixture('llava-tiny'),
      '--image',
      path.join(fixture('llava-tiny'), 'image.png'),
      '--max-new-tokens',
      '3000',
      '--threads',
      '1',
    ]);
    let out = '',
      err = '',
      state = 0;
    p.stdout.on('data', (d) => {
      out += d;
      if (state === 0 && out.length > 10) {
        state = 1;
        p.kill('SIGINT');
      }
    });
    p.stderr.on('data', (d) => {
      err += d;
      if (state === 1 && err.includes('[turn 1')) {
        state = 2;
        p.stdin.write('Again?\n');
      }
      if (state === 2 && err.includes('[turn 2')) {
        state = 3;
        p.kill('SIGINT');
      }
    });
    p.stdin.write('What is shown?\n');
    const code = await new Promise<number | null>((resolve) => p.on('exit', resolve));
    assert.match(err, /\[turn 1, abort: stopped by Ctrl-C\]/);
    assert.match(err, /\[turn 2, length\] .* decode 3000 tokens/);
    assert.equal(code, 130, err);
  });

  it('Ctrl-C in run stops the answer: the stats say abort and it exits 130', async () => {
    const p = spawn(process.execPath, [
      cli,
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      path.join(fixture('llava-tiny'), 'image.png'),
      '--prompt',
      'What is shown?',
      '--max-new-tokens',
      '3000',
      '--threads',
      '1',
    ]);
    let err = '',
      sent = false;
    p.stdout.on('data', () => {
      if (!sent) {
        sent = true;
        p.kill('SIGINT');
      }
    });
    p.stderr.on('data', (d) => {
      err += d;
    });
    const code = await new Promise<number | null>((resolve) => p.on('exit', resolve));
    assert.match(err, /\[abort\] prompt 79 tokens/);
    assert.equal(code, 130);
  });
});

describe('class 5: inspect checks what loading checks', () => {
  it('every problem of a folder is listed, and inspect exits 1', async () => {
    const bad = modelVariant(DEFAULT_MODEL_DIR, (d) => {
      replaceFile(d, 'chat_template.jinja', '{% if %}');
      replaceFile(d, 'generation_config.json', '{"eos_token_id": "t"}');
      editJson(d, 'preprocessor_config.json', (j) => {
        j.crop_size = { height: 200, width: 224 };
      });
      withHeader(d, (h) => {
        delete h['language_model.model.layers.2.mlp.up_proj.weight'];
      });
    });
    const r = await inspectModel(bad);
    assert.equal(r.problems.length, 4, r.problems.join('\n'));
    for (const [i, want] of [
      /chat_template\.jinja: cannot parse/,
      /generation_config\.json: eos_token_id: expected a token id/,
      /preprocessor_config\.json: crop_size 224x200 differs/,
      /needs tensor "language_model\.model\.layers\.2\.mlp\.up_proj\.weight"/,
    ].entries()) {
      assert.ok(
        r.problems.some((p) => want.test(p)),
        `problem ${i}: ${want} not in\n${r.problems.join('\n')}`,
      );
    }
    const c = runCli(['inspect', bad]);
    assert.equal(c.status, 1);
    assert.equal(c.stderr.trim().split('\n').length, 4);
    assert.match(c.stdout, /problems: {5}4 \(on stderr\): the folder does not load/);
    const json = JSON.parse(runCli(['inspect', bad, '--json']).stdout) as { problems: string[] };
    assert.deepEqual(json.problems, r.problems);
  });

  it('a folder inspect passes loads, and one it fails does not: the tokenizer and the shapes both ways', async () => {
    for (const [edit, loads] of [
      [
        (d: string) =>
          editJson(d, 'tokenizer.json', (j) => {
            j.model.type = 'Magic';
          }),
        false,
      ],
      [
        (d: string) =>
          editJson(d, 'config.json', (j) => {
            j.text_config.num_hidden_layers = 5;
          }),
        false,
      ],
      [
        (d: string) =>
          editJson(d, 'config.json', (j) => {
            j.text_config.num_hidden_layers = 3;
          }),
        false,
      ],
      [(d: string) => replaceFile(d, 'generation_config.json', null), true],
    ] as const) {
      const d = modelVariant(DEFAULT_MODEL_DIR, edit);
      const r = await inspectModel(d);
      const loaded = await VisionLanguageModel.load(d, { backend: be }).then(
        async (m) => {
          await m.close();
          return true;
        },
        () => false,
      );
      assert.equal(r.problems.length === 0, loaded, r.problems.join('\n'));
      assert.equal(loaded, loads);
    }
  });
});

describe('class 6: eval input', () => {
  it("line numbers are the file's own; a null or malformed line names its line; an empty file is an error", () => {
    const dir = tempDir();
    const f = path.join(dir, 'episodes.jsonl');
    const good = '{"image": "a.png", "questions": [{"type": "colour", "question": "q?", "answer": "red"}]}';
    fs.writeFileSync(f, `\n${good}\n\n\nnull\n`);
    assert.throws(
      () => readEpisodes(f),
      (e: Error) => e instanceof InputError && e.message === `${f}:5: expected an object { image, questions: [...] }, found null`,
    );
    fs.writeFileSync(f, `${good}\r\n\r\n{"image": \r\n`);
    assert.throws(() => readEpisodes(f), /episodes\.jsonl:3: not JSON/);
    fs.writeFileSync(f, '\n  \n');
    assert.throws(() => readEpisodes(f), /episodes\.jsonl: no episodes/);
    fs.writeFileSync(f, `\ufeff${good}\n`);
    assert.equal(readEpisodes(f).length, 1);
  });

  it('a missing image fails its episode only: the run goes on, reports it and exits 1', async () => {
    const dir = tempDir();
    const lines = fs
      .readFileSync(path.join(samples, 'episodes.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .slice(0, 3)
      .map((l, i) => {
        const j = JSON.parse(l) as { image: string };
        return JSON.stringify({ ...j, image: i === 1 ? 'gone.png' : path.join(samples, j.image) });
      });
    const f = path.join(dir, 'episodes.jsonl');
    fs.writeFileSync(f, lines.join('\n'));
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    try {
      const report = await evaluate(m, readEpisodes(f), { mode: 'chat' });
      assert.deepEqual(
        report.failed.map((x) => [x.episode, x.source, path.basename(x.image)]),
        [[1, `${f}:2`, 'gone.png']],
      );
      assert.equal(
        report.results.length,
        readEpisodes(f)
          .filter((_, i) => i !== 1)
          .reduce((a, e) => a + e.questions.length, 0),
      );
    } finally {
      await m.close();
    }
    const r = runCli(['eval', '--data', f, '--max-new-tokens', '4']);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /1 episode failed \(\d+ questions not scored\)/);
    assert.match(
      r.stderr,
      /episode 2 \(.*episodes\.jsonl:2\) failed, its \d+ questions not scored: .*gone\.png: cannot open the image: no such file or folder/,
    );
  });
});

describe('class 7: messages that name what the user wrote', () => {
  it('messages with string content work on the default model (as the README shows)', async () => {
    const m = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { backend: be });
    try {
      const parts = await m.generate(
        { images: [IMAGE], messages: [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: QUESTION }] }] },
        { maxNewTokens: 4 },
      );
      const text = await m.generate({ messages: [{ role: 'user', content: 'Is there a red circle?' }] }, { maxNewTokens: 4 });
      assert.equal(parts.text, 'yellow');
      assert.equal(text.finishReason, 'eos');
      await assert.rejects(
        m.generate({ images: [IMAGE], messages: [{ role: 'user', content: QUESTION }] }),
        /messages hold 0 image parts \(\{ type: 'image' \}\) but 1 image was given/,
      );
      await assert.rejects(
        m.generate({ messages: [{ role: 'robot', content: 'hi' } as never] }),
        /messages\[0\]\.role must be one of system, user, assistant, got the string "robot"/,
      );
    } finally {
      await m.close();
    }
  });

  it('a typed <image> is told it is the placeholder, not that there are two', () => {
    const r = runCli(['run', '--image', IMAGE, '--prompt', '<image> What colour is it?']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /the prompt contains "<image>", the model's image placeholder, as text/);
  });

  it('--fastv-k past the layers names the flag and the layer count', () => {
    const r = runCli(['run', '--image', IMAGE, '--prompt', QUESTION, '--method', 'fastv', '--fastv-k', '100']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--fastv-k 100: visual tokens are dropped after layer K, and this model's language model has 4 layers, so K must be in 1\.\.3/);
  });

  it('a string eos_token_id names the file and the field; a BOM is read; invisible characters are spelled out', async () => {
    const eos = modelVariant(DEFAULT_MODEL_DIR, (d) => replaceFile(d, 'generation_config.json', '{"eos_token_id": "t"}'));
    await assert.rejects(
      VisionLanguageModel.load(eos, { backend: be }),
      /generation_config\.json: eos_token_id: expected a token id \(a non-negative integer\) or a list of them, found the string "t"/,
    );
    const bom = modelVariant(DEFAULT_MODEL_DIR, (d) =>
      replaceFile(d, 'config.json', `\ufeff${fs.readFileSync(path.join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8')}`),
    );
    await (await VisionLanguageModel.load(bom, { backend: be })).close();
    const zw = modelVariant(DEFAULT_MODEL_DIR, (d) => replaceFile(d, 'config.json', '{\u200b"model_type": "llava"}'));
    await assert.rejects(
      VisionLanguageModel.load(zw, { backend: be }),
      /config\.json: invalid JSON at line 1, column 2: unexpected U\+200B \(an invisible character\)/,
    );
  });

  it('run without --image on a vision model, or with an empty prompt, says what it does', () => {
    const r = runCli(['run', '--prompt', QUESTION, '--max-new-tokens', '2']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /sparsevila: warning: no --image given: the model answers from the prompt text alone/);
    const e = runCli(['run', '--image', IMAGE, '--prompt', '', '--max-new-tokens', '2']);
    assert.equal(e.status, 0, e.stderr);
    assert.match(e.stderr, /sparsevila: warning: the prompt is empty: the model answers the image with no question/);
  });

  it('with Chromium missing, the browser test fails with its install hint', () => {
    // A test run of its own (NODE_TEST_CONTEXT would make it report to this one instead).
    const env: NodeJS.ProcessEnv = { ...process.env, CHROMIUM_PATH: '/nonexistent/chromium' };
    delete env.NODE_TEST_CONTEXT;
    const r = spawnSync(process.execPath, ['--test', fileURLToPath(new URL('./browser.test.js', import.meta.url))], { encoding: 'utf8', env });
    assert.notEqual(r.status, 0);
    assert.match(r.stdout, /Chromium not found at \/nonexistent\/chromium: install it \(apt-get install chromium\) or set CHROMIUM_PATH/);
    assert.doesNotMatch(r.stdout, /Promise resolution is still pending/);
  });
});

describe('the README', () => {
  it('its library example (messages with parts and with a string) runs as documented on the default model', () => {
    const readme = fs.readFileSync(fileURLToPath(new URL('../../README.md', import.meta.url)), 'utf8');
    const library = readme.slice(readme.indexOf('## Library'));
    const code = /```ts\n([\s\S]*?)```/.exec(library)![1];
    const index = fileURLToPath(new URL('../src/index.js', import.meta.url));
    const file = path.join(tempDir(), 'example.mjs');
    fs.writeFileSync(file, code.replace("from 'sparsevila'", `from ${JSON.stringify(index)}`));
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8', cwd: fileURLToPath(new URL('../..', import.meta.url)), timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[lines.length - 2], 'yellow (eos)');
    assert.match(lines[lines.length - 1], /^(yes|no)$/);
  });
});

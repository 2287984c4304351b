import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChatTemplate, ChatTemplateError, applyChatTemplate, loadChatTemplateSource, type ChatMessage } from '../src/io/chat-template.js';
import { PromptError, expandImageTokens } from '../src/io/prompt.js';
import { TextTokenizer } from '../src/io/tokenizer.js';
import { fixture, llavaGoldenPrompt, tempDir } from './helpers.js';

const LLAVA = fixture('llava-tiny');
const SMOL = fixture('smolvlm-tiny');

const llavaPrompt = llavaGoldenPrompt();

/** A fresh folder holding `files` (name → text). */
function templateDir(files: Record<string, string>): string {
  const dir = tempDir('sparsevila-chat-');
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
  return dir;
}

const llavaMessages: ChatMessage[] = [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is shown in this image?' }] }];

// ---- llava-tiny ----------------------------------------------------------------------------------

test('llava-tiny: template → expansion → ids reproduce the golden prompt', () => {
  const tpl = ChatTemplate.fromDir(LLAVA);
  assert.equal(tpl.file, path.join(LLAVA, 'chat_template.jinja'));
  const text = tpl.render(llavaMessages, { addGenerationPrompt: true });
  assert.equal(text, 'USER: <image>\nWhat is shown in this image? ASSISTANT:');
  assert.equal(text, llavaPrompt.text);
  const expanded = expandImageTokens(text, '<image>', [64]);
  assert.equal(expanded, llavaPrompt.text_after_expansion);
  assert.deepEqual(TextTokenizer.fromDir(LLAVA).encode(expanded), llavaPrompt.input_ids);
});

test('llava-tiny: {% generation %} blocks render their content; add_generation_prompt', () => {
  const tpl = ChatTemplate.fromDir(LLAVA);
  const convo: ChatMessage[] = [
    { role: 'system', content: [{ type: 'text', text: 'Be brief.' }] },
    ...llavaMessages,
    { role: 'assistant', content: [{ type: 'text', text: 'A cat.' }] },
    { role: 'user', content: [{ type: 'text', text: 'Color?' }] },
  ];
  assert.equal(tpl.render(convo, { addGenerationPrompt: false }), 'Be brief. USER: <image>\nWhat is shown in this image? ASSISTANT: A cat. USER: Color? ');
  assert.equal(tpl.render(convo), 'Be brief. USER: <image>\nWhat is shown in this image? ASSISTANT: A cat. USER: Color? ASSISTANT:');
  assert.equal(applyChatTemplate(LLAVA, llavaMessages), llavaPrompt.text);
});

test('{% generation %} keeps whitespace control like a block tag', () => {
  const tpl = new ChatTemplate('{% for m in messages %}[{% generation %}\n  {{ m.content }}\n{%- endgeneration %}]{% endfor %}');
  // trim_blocks eats the newline after the opening tag; "-" strips before the closing one.
  assert.equal(
    tpl.render([
      { role: 'assistant', content: 'x' },
      { role: 'assistant', content: 'y' },
    ]),
    '[  x][  y]',
  );
});

// ---- smolvlm-tiny ---------------------------------------------------------------------------------

test('smolvlm-tiny: one user turn renders as SmolVLM does', () => {
  const messages: ChatMessage[] = [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is in this image?' }] }];
  const expected = '<|im_start|>User:<image>What is in this image?<end_of_utterance>\nAssistant:';
  assert.equal(ChatTemplate.fromDir(SMOL).render(messages, { addGenerationPrompt: true }), expected);
  // The same template is in tokenizer_config.json; the .jinja file has priority.
  const { file } = loadChatTemplateSource(SMOL);
  assert.equal(file, path.join(SMOL, 'chat_template.jinja'));
  const cfg = fs.readFileSync(path.join(SMOL, 'tokenizer_config.json'), 'utf8');
  assert.equal(ChatTemplate.fromDir(templateDir({ 'tokenizer_config.json': cfg })).render(messages), expected);
  assert.equal(
    ChatTemplate.fromDir(SMOL).render([{ role: 'user', content: [{ type: 'text', text: 'Hi' }] }], { addGenerationPrompt: false }),
    '<|im_start|>User: Hi<end_of_utterance>\n',
  );
});

// ---- sources, variables, errors ---------------------------------------------------------------------

test('template sources in priority order: .jinja, chat_template.json, tokenizer_config.json', () => {
  const cfg = JSON.stringify({ bos_token: '<s>', chat_template: 'config' });
  const json = JSON.stringify({ chat_template: 'json' });
  const msgs: ChatMessage[] = [{ role: 'user', content: 'x' }];
  assert.equal(
    ChatTemplate.fromDir(templateDir({ 'chat_template.jinja': 'jinja\n', 'chat_template.json': json, 'tokenizer_config.json': cfg })).render(msgs),
    'jinja',
  );
  assert.equal(ChatTemplate.fromDir(templateDir({ 'chat_template.json': json, 'tokenizer_config.json': cfg })).render(msgs), 'json');
  assert.equal(ChatTemplate.fromDir(templateDir({ 'tokenizer_config.json': cfg })).render(msgs), 'config');
  // A list of named templates: "default", or another by name.
  const listed = templateDir({
    'tokenizer_config.json': JSON.stringify({
      chat_template: [
        { name: 'tool_use', template: 'tools' },
        { name: 'default', template: 'default' },
      ],
    }),
  });
  assert.equal(ChatTemplate.fromDir(listed).render(msgs), 'default');
  assert.equal(ChatTemplate.fromDir(listed, { name: 'tool_use' }).render(msgs), 'tools');
  assert.throws(
    () => ChatTemplate.fromDir(listed, { name: 'rag' }),
    (e: unknown) => e instanceof ChatTemplateError && e.message.includes('"rag"') && e.message.includes('"tool_use"'),
  );
});

test('special tokens, string content and raise_exception', () => {
  const dir = templateDir({
    'tokenizer_config.json': JSON.stringify({
      bos_token: '<s>',
      eos_token: { content: '</s>' },
      added_tokens_decoder: {},
      chat_template:
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" +
        "[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}" +
        '{% if tools is not none %}TOOLS{% endif %}{{ pad_token }}',
    }),
    'special_tokens_map.json': JSON.stringify({ pad_token: '<pad>', bos_token: '<ignored>' }),
  });
  const tpl = ChatTemplate.fromDir(dir);
  assert.equal(tpl.render([{ role: 'user', content: 'hi' }]), '<s>[user]hi</s>[assistant]<pad>');
  assert.equal(tpl.render([{ role: 'user', content: 'hi' }], { addGenerationPrompt: false, variables: { bos_token: '' } }), '[user]hi</s><pad>');
  assert.throws(
    () => tpl.render([{ role: 'system', content: 'x' }]),
    (e: unknown) => e instanceof ChatTemplateError && e.message.includes('no system role'),
  );
});

test('a folder without a chat template is a ChatTemplateError naming it', () => {
  const dir = templateDir({ 'tokenizer_config.json': JSON.stringify({ bos_token: '<s>' }) });
  assert.throws(
    () => ChatTemplate.fromDir(dir),
    (e: unknown) => {
      assert.ok(e instanceof ChatTemplateError, String(e));
      assert.ok(e.message.includes('no chat template'), e.message);
      assert.ok(e.message.includes(dir), e.message);
      return true;
    },
  );
  assert.throws(() => ChatTemplate.fromDir(templateDir({})), ChatTemplateError);
  const badJson = templateDir({ 'chat_template.json': '{oops' });
  assert.throws(
    () => ChatTemplate.fromDir(badJson),
    (e: unknown) => e instanceof ChatTemplateError && e.message.includes(path.join(badJson, 'chat_template.json')),
  );
  const badSyntax = templateDir({ 'chat_template.jinja': '{% for m in messages %}' });
  assert.throws(
    () => ChatTemplate.fromDir(badSyntax),
    (e: unknown) => e instanceof ChatTemplateError && e.message.includes(path.join(badSyntax, 'chat_template.jinja')),
  );
});

// ---- expandImageTokens ------------------------------------------------------------------------------

test('expandImageTokens replaces the i-th placeholder with countPerImage[i] copies', () => {
  assert.equal(expandImageTokens('a<image>b<image>c', '<image>', [2, 3]), 'a<image><image>b<image><image><image>c');
  assert.equal(expandImageTokens('<image>', '<image>', [1]), '<image>');
  assert.equal(expandImageTokens('<image><image>', '<image>', [0, 2]), '<image><image>');
  assert.equal(expandImageTokens('no images', '<image>', []), 'no images');
});

test('expandImageTokens: placeholder/image count mismatch names both counts', () => {
  assert.throws(
    () => expandImageTokens('a<image>b<image>', '<image>', [4]),
    (e: unknown) => {
      assert.ok(e instanceof PromptError, String(e));
      assert.ok(/2 "<image>" placeholders/.test(e.message) && /1 image was given/.test(e.message), e.message);
      return true;
    },
  );
  assert.throws(
    () => expandImageTokens('text', '<image>', [64]),
    (e: unknown) => e instanceof PromptError && e.message.includes('0 "<image>" placeholders') && e.message.includes('1 image'),
  );
  assert.throws(() => expandImageTokens('<image>', '<image>', [1.5]), PromptError);
  assert.throws(() => expandImageTokens('<image>', '', [1]), PromptError);
});

// npm run bench:awq: 4-bit (AWQ W4A16, and the opt-in W4A8) against bf16 on the language models of
// SmolVLM-256M (group size 64: its hidden size 576 is not a multiple of 128) and VILA1.5-3B (group
// 128), random weights of the exact shapes (AutoAWQ GEMM tensors generated on the fly, see
// random-weights.ts): prefill and decode tok/s, the weight bytes a decode step streams and at what
// rate, peak wasm memory; llama.cpp's Q4_0 figures beside (measured elsewhere on this kind of
// machine). Writes its section of docs/BENCHMARKS.md.
import { LlamaShape, RandomAwqLlamaSource, RandomLlamaSource, SMOLVLM_TEXT_SHAPE, VILA_3B_LLM_SHAPE } from './random-weights.js';
import { ModelSpec, RunResult, benchModel, level } from './decoder-run.js';
import { machineDescription, markdownTable, probeMachine, writeSection } from './report.js';

interface AwqSpec extends ModelSpec {
  groupSize: number;
  /** llama.cpp Q4_0 decode tok/s on this kind of machine (2 threads), as the issue quotes it. */
  q4Decode: string;
  /** Decode targets for INT4 (W4A16): tok/s, and a multiple of our bf16 decode. */
  targetTokS: number;
  targetVsBf16?: number;
}

const SMOLVLM: AwqSpec = {
  key: 'smolvlm',
  name: 'SmolVLM-256M text model',
  label: '<random smolvlm-256m text>',
  shape: SMOLVLM_TEXT_SHAPE,
  ref: { prefill: {}, decode: {} },
  warmupTokens: 256,
  prompts: [256, 1024],
  prefillReps: 3,
  decodeWarmup: 4,
  decodeSteps: 32,
  groupSize: 64,
  q4Decode: '131–153',
  targetTokS: 120,
};

const VILA: AwqSpec = {
  key: 'vila',
  name: 'VILA1.5-3B LLM',
  label: '<random vila1.5-3b llm>',
  shape: VILA_3B_LLM_SHAPE,
  ref: { prefill: {}, decode: {} },
  warmupTokens: 32,
  prompts: [256],
  prefillReps: 1,
  decodeWarmup: 2,
  decodeSteps: 8,
  groupSize: 128,
  q4Decode: '10–16 (9.4 at context 2048)',
  targetTokS: 16,
  targetVsBf16: 2.5,
};

type Variant = 'bf16' | 'W4A16' | 'W4A8';
const VARIANTS: Variant[] = ['bf16', 'W4A16', 'W4A8'];

/** Bytes a decode step reads of the weights: every decoder linear, and the lm_head (bf16). */
function streamedBytes(shape: LlamaShape, variant: Variant, G: number): number {
  const s = shape,
    H = s.hidden_size,
    D = s.head_dim;
  const params =
    s.num_hidden_layers * (H * (s.num_attention_heads + 2 * s.num_key_value_heads) * D + s.num_attention_heads * D * H + 3 * H * s.intermediate_size);
  const lmHead = s.vocab_size * H * 2;
  // int4 on the backend: half a byte per weight, and an f32 scale and offset per group.
  return lmHead + (variant === 'bf16' ? params * 2 : params / 2 + (params / G) * 8);
}

const started = performance.now();
const only = process.env.SPARSEVILA_BENCH_MODELS?.split(',').map((s) => s.trim());
const probes = await probeMachine();
console.log(`machine limits (2 threads): read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`);

const results: { spec: AwqSpec; variant: Variant; r: RunResult }[] = [];
for (const spec of [SMOLVLM, VILA]) {
  if (only && !only.includes(spec.key)) continue;
  for (const variant of VARIANTS) {
    console.log(`${spec.name}, ${variant}, 2 threads:`);
    const source = variant === 'bf16' ? new RandomLlamaSource(spec.shape, spec.label) : new RandomAwqLlamaSource(spec.shape, spec.label, spec.groupSize);
    const r = await benchModel(spec, 2, source, { int4Activations: variant === 'W4A8' ? 'i8' : 'i16' }, { profileSteps: Math.max(4, spec.decodeSteps / 2) });
    results.push({ spec, variant, r });
  }
}
const wallS = (performance.now() - started) / 1000;

const f1 = (x: number) => x.toFixed(1);
const gib = (b: number) => (b / 2 ** 30).toFixed(2);
const header = [
  'model shape',
  'weights',
  'prefill tok/s (prompt)',
  'decode tok/s, context 256',
  'decode tok/s, context 2048',
  'vs bf16 decode (256)',
  'weight bytes / decode step',
  'weight stream GB/s (256)',
  'wasm in use GiB',
  'llama.cpp Q4_0 decode *',
  'target (W4A16)',
  'met',
];
const rows = results.map(({ spec, variant, r }) => {
  const bf = results.find((x) => x.spec === spec && x.variant === 'bf16')?.r;
  const d256 = r.decode.find((d) => d.ctx === 256),
    d2048 = r.decode.find((d) => d.ctx === 2048);
  const bf256 = bf?.decode.find((d) => d.ctx === 256);
  const bytes = streamedBytes(spec.shape, variant, spec.groupSize);
  const vs = d256 && bf256 ? d256.tokS / bf256.tokS : NaN;
  const target = variant === 'W4A16' ? `≥ ${spec.targetTokS} tok/s${spec.targetVsBf16 ? `, ≥ ${spec.targetVsBf16}× bf16` : ''}` : '—';
  const met = variant === 'W4A16' && d256 ? (d256.tokS >= spec.targetTokS && (!spec.targetVsBf16 || vs >= spec.targetVsBf16) ? 'yes' : 'no') : '—';
  return [
    spec.name,
    variant === 'bf16' ? 'bf16' : `int4 G${spec.groupSize} ${variant}`,
    r.prefill.map((p) => `${f1(p.tokS)} (${p.tokens})`).join(', '),
    d256 ? f1(d256.tokS) : '—',
    d2048 ? f1(d2048.tokS) : '—',
    variant === 'bf16' || !Number.isFinite(vs) ? '—' : `${vs.toFixed(2)}×`,
    `${(bytes / 2 ** 30).toFixed(2)} GiB`,
    d256 ? f1(bytes / d256.msPerToken / 1e6) : '—',
    gib(r.wasmUsed),
    variant === 'bf16' ? '—' : spec.q4Decode,
    target,
    met,
  ];
});
// Where a decode step's time goes (context 256): the decoder's linears and their own weight
// stream rate, the lm_head, attention, and everything else.
const profileHeader = ['model shape', 'weights', 'decoder linears ms (GB/s)', 'lm_head ms', 'attention ms', 'everything else ms', 'step ms (profiled)'];
const profileRows = results
  .filter((x) => x.r.profile)
  .map(({ spec, variant, r }) => {
    const p = r.profile!;
    const sum = (pred: (part: string) => boolean) => p.filter((x) => pred(x.part)).reduce((a, x) => a + x.ms, 0);
    const linears = sum((x) => x.startsWith('decoder linears')),
      head = sum((x) => x.startsWith('lm_head')),
      attn = sum((x) => x === 'attention'),
      total = sum(() => true);
    const linearBytes = streamedBytes(spec.shape, variant, spec.groupSize) - spec.shape.vocab_size * spec.shape.hidden_size * 2;
    const top = p
      .filter((x) => !x.part.startsWith('decoder linears') && !x.part.startsWith('lm_head') && x.part !== 'attention')
      .slice(0, 3)
      .map((x) => `${x.part} ${x.ms.toFixed(1)}`)
      .join(', ');
    return [
      spec.name,
      variant === 'bf16' ? 'bf16' : `int4 ${variant}`,
      `${f1(linears)} (${f1(linearBytes / linears / 1e6)})`,
      f1(head),
      f1(attn),
      `${f1(total - linears - head - attn)} (${top})`,
      f1(total),
    ];
  });
const failures = results.filter((x) => x.r.error).map((x) => `- ${x.spec.name} ${x.variant}: FAILED: ${x.r.error}`);
console.log('');
console.log(markdownTable(header, rows));
console.log('');
console.log(markdownTable(profileHeader, profileRows));
for (const f of failures) console.log(f);
console.log(`wall time ${f1(wallS)} s`);

if (only) {
  console.log('(a subset was run: docs/BENCHMARKS.md is left as it was)');
} else {
  const body = [
    '## 4-bit language models (`npm run bench:awq`)',
    '',
    `Machine: ${machineDescription([`kernel build: ${level}`, `probes at 2 threads: read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`])}. ` +
      `Run on ${new Date().toISOString().slice(0, 10)}; this part took ${f1(wallS / 60)} min.`,
    '',
    "The decoders of SmolVLM-256M and VILA1.5-3B with random weights of their exact shapes, as bench:model measures them (prefill from a fresh cache; decode with the cache's first slots filled), " +
      'in bf16 and as AutoAWQ GEMM checkpoints (every decoder linear 4-bit, group 64 for SmolVLM, whose hidden size 576 is not a multiple of 128, and 128 for VILA; embeddings and lm_head bf16), ' +
      'loaded through the awq-gemm weight format. W4A16: decode quantizes activations to 15-bit integers per group, held as two i8 planes for the relaxed i8 dot product (the default); W4A8: to i8 (opt-in, `--int4-activations i8`). ' +
      'Prefill dequantizes 8-row panels to f32 and runs the f32 GEMM. Weight bytes per decode step: all decoder linears as held on the backend (int4: half a byte per weight plus an f32 scale and offset per group) and the bf16 lm_head; ' +
      'the stream rate is those bytes over the time of a whole step (attention and the rest included), a lower bound of the GEMVs’ own rate.',
    '',
    markdownTable(header, rows),
    '',
    "\\* llama.cpp's Q4_0 figures are not from this run: measured elsewhere on the same kind of machine (2 threads), as the issue quotes them.",
    '',
    '### Where a decode step goes (context 256)',
    '',
    'The same decoders, a few more decode steps with every backend call timed (the outermost calls; the rest is JavaScript between them). ' +
      'Decoder linears: every decoder GEMV, with its own weight stream rate (the decoder-linear bytes over their time).',
    '',
    markdownTable(profileHeader, profileRows),
    ...(failures.length ? ['', ...failures] : []),
  ].join('\n');
  console.log(`wrote ${writeSection('awq', body)}`);
}

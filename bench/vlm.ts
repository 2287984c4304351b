// Part of npm run bench:model: whole VLMs on random bf16 weights of real shapes, through the
// families' own code (registry row, processor, tower, connector, decoder, the engine's turn):
// SmolVLM-256M (SigLIP-B/16 at 512 px per tile, pixel shuffle 4, its 30-layer Llama) and
// VILA1.5-3B (SigLIP-so400m at 384 px, mlp_downsample, its Llama). Vision encode per tile, the
// time for a 2048×1536 image, LLM prefill and decode, and where an image's end-to-end time goes
// (encode / prefill / decode), dense and SparseVILA (0.6 / 0.75). The tensor list of each model is
// what its family's loader asks for (a check-mode load on the meta backend), so the shapes are the
// family's own. Writes its section of docs/BENCHMARKS.md.
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { MetaBackend } from '../src/kernels/meta-backend.js';
import { WeightLoader } from '../src/model/weights.js';
import { LinearCompute } from '../src/kernels/backend.js';
import { parseConfig } from '../src/model/registry.js';
import { AnyFamily, FamilyConfig, ProcessorFiles } from '../src/model/family.js';
import { Problems } from '../src/base/problems.js';
import { TensorSource } from '../src/formats/safetensors.js';
import { CoreParts, ModelCore } from '../src/engine/core.js';
import { runTurn } from '../src/engine/generation.js';
import { DEFAULT_IMAGE_LIMITS, RgbImage } from '../src/io/image.js';
import { densePrefill, sparseVilaPrefill } from '../src/sparsity/method.js';
import { RandomTensorSource, SMOLVLM_TEXT_SHAPE, VILA_3B_LLM_SHAPE, llamaConfigJson } from './random-weights.js';
import { machineDescription, markdownTable, writeSection } from './report.js';

interface VlmSpec {
  key: string;
  name: string;
  config: Record<string, unknown>;
  files: ProcessorFiles;
  /** Timed single-tile encodes (median reported). */
  tileReps: number;
  decodeTokens: number;
  /** llama.cpp's CLIP encoder figure for a tile of this tower, if measured (ms). */
  refTileMs?: number;
  /** Our target for one tile (ms), if the issue sets one. */
  targetTileMs?: number;
}

const { model_type: _text, ...smolText } = llamaConfigJson(SMOLVLM_TEXT_SHAPE);
const SMOLVLM: VlmSpec = {
  key: 'smolvlm',
  name: 'SmolVLM-256M',
  config: {
    architectures: ['Idefics3ForConditionalGeneration'],
    model_type: 'idefics3',
    torch_dtype: 'bfloat16',
    image_token_id: 49190,
    scale_factor: 4,
    tie_word_embeddings: true,
    vision_config: {
      model_type: 'idefics3_vision',
      hidden_size: 768,
      intermediate_size: 3072,
      num_hidden_layers: 12,
      num_attention_heads: 12,
      image_size: 512,
      patch_size: 16,
      hidden_act: 'gelu_pytorch_tanh',
      layer_norm_eps: 1e-6,
    },
    text_config: { model_type: 'llama', ...smolText },
  },
  files: {
    'preprocessor_config.json': {
      image_processor_type: 'Idefics3ImageProcessor',
      do_image_splitting: true,
      size: { longest_edge: 2048 },
      max_image_size: { longest_edge: 512 },
      resample: 1,
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
    },
    'processor_config.json': { image_seq_len: 64 },
  },
  tileReps: 3,
  decodeTokens: 16,
  // llama.cpp's CLIP encoder (F16, 2 threads) needs about 1.55 s for such a tile on this kind of machine; the issue's target is 2.2 s.
  refTileMs: 1550,
  targetTileMs: 2200,
};

const { model_type: _vtext, ...vilaText } = llamaConfigJson(VILA_3B_LLM_SHAPE);
const VILA: VlmSpec = {
  key: 'vila',
  name: 'VILA1.5-3B',
  config: {
    architectures: ['LlavaLlamaModel'],
    model_type: 'llava_llama',
    torch_dtype: 'bfloat16',
    mm_vision_select_layer: -2,
    mm_vision_select_feature: 'cls_patch',
    image_aspect_ratio: 'resize',
    llm_cfg: { model_type: 'llama', ...vilaText },
    vision_tower_cfg: {
      model_type: 'siglip_vision_model',
      hidden_size: 1152,
      intermediate_size: 4304,
      num_hidden_layers: 27,
      num_attention_heads: 16,
      image_size: 384,
      patch_size: 14,
      hidden_act: 'gelu_pytorch_tanh',
      layer_norm_eps: 1e-6,
    },
    mm_projector_cfg: { model_type: 'v2l_projector', mm_projector_type: 'mlp_downsample' },
  },
  files: {
    'vision_tower/preprocessor_config.json': {
      image_processor_type: 'SiglipImageProcessor',
      size: { height: 384, width: 384 },
      resample: 3,
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
    },
  },
  tileReps: 1,
  decodeTokens: 8,
};

/** The model as the engine holds it (ModelCore's constructor is for subclasses). */
class BenchModel extends ModelCore {
  constructor(p: CoreParts) {
    super(p);
  }
}

/** A deterministic 2048 × 1536 picture (smooth gradients and stripes; the values do not change the timings). */
function picture(width = 2048, height = 1536): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      data[o] = (x * 255) / width;
      data[o + 1] = (y * 255) / height;
      data[o + 2] = ((x + y) >> 4) & 1 ? 200 : 40;
    }
  }
  return { width, height, data };
}

/** The tensors a family's loader asks for, with their shapes (a check-mode load on the meta backend). */
async function impliedTensors(family: AnyFamily, config: FamilyConfig, label: string): Promise<Map<string, number[]>> {
  const none: TensorSource = {
    info: (n) => {
      throw new Error(`no tensor ${n}`);
    },
    readInto: () => {
      throw new Error('no data');
    },
  };
  const loader = new WeightLoader(new MetaBackend(), none, label, { check: new Problems(true) });
  await family.load(loader, config, {});
  return loader.implied;
}

interface Phase {
  encodeMs: number;
  prefillMs: number;
  prefillTokens: number;
  decodeMs: number;
  decodeTokS: number;
  visualIn: number;
  visualKept: number;
  visualRetrieved: number;
}

/** One tile's outputs from the `stored` run, to measure what `int16` changes. */
interface TileOutputs {
  features: Float32Array;
  salience: Float32Array;
}

interface VlmResult {
  spec: VlmSpec;
  compute: LinearCompute;
  /** int16 against stored on one tile: projected features and the kept set at p = 0.6. */
  accuracy?: { relRms: number; maxRel: number; keptOverlap: number };
  outputs?: TileOutputs;
  weightBytes: number;
  loadS: number;
  tiles: number;
  tileMs: number;
  tileSalienceMs: number;
  dense?: Phase;
  sparse?: Phase;
  maxRss: number;
  error?: string;
}

const simd = (process.env.SPARSEVILA_SIMD as 'simd' | 'relaxed' | undefined) ?? 'auto';
let level = '';

/** Indices of the `keep` largest values. */
function topSet(v: Float32Array, keep: number): Set<number> {
  return new Set(
    Array.from(v.keys())
      .sort((a, b) => v[b] - v[a])
      .slice(0, keep),
  );
}

/** How far int16's tile outputs are from stored's: relative RMS and max error of the features, and the overlap of the kept sets at p = 0.6. */
function compareTile(ref: TileOutputs, got: TileOutputs): { relRms: number; maxRel: number; keptOverlap: number } {
  let se = 0,
    sr = 0,
    maxAbsRef = 0,
    maxErr = 0;
  for (let i = 0; i < ref.features.length; i++) {
    const e = got.features[i] - ref.features[i];
    se += e * e;
    sr += ref.features[i] * ref.features[i];
    maxErr = Math.max(maxErr, Math.abs(e));
    maxAbsRef = Math.max(maxAbsRef, Math.abs(ref.features[i]));
  }
  const keep = Math.round(ref.salience.length * 0.4);
  const a = topSet(ref.salience, keep),
    b = topSet(got.salience, keep);
  let common = 0;
  for (const i of a) if (b.has(i)) common++;
  return { relRms: Math.sqrt(se / sr), maxRel: maxErr / maxAbsRef, keptOverlap: common / keep };
}

async function benchVlm(spec: VlmSpec, threads: number, compute: LinearCompute, ref?: TileOutputs): Promise<VlmResult> {
  const log = (s: string) => console.log(`  [${spec.key} ${compute}] ${s}`);
  const label = `<random ${spec.name}>`;
  const { family, config } = parseConfig(spec.config, label);
  const shapes = await impliedTensors(family, config, label);
  const source = new RandomTensorSource(shapes, label);
  const result: VlmResult = { spec, compute, weightBytes: source.totalBytes, loadS: 0, tiles: 0, tileMs: 0, tileSalienceMs: 0, maxRss: 0 };
  const be = await WasmBackend.create({ threads, simd });
  level = be.simdLevel;
  try {
    const t0 = performance.now();
    const loader = new WeightLoader(be, source, label, { visionCompute: compute });
    const { decoder, encoder } = await family.load(loader, config, {});
    loader.checkAllUsed(source.names());
    result.loadS = (performance.now() - t0) / 1000;
    log(`loaded ${(source.totalBytes / 2 ** 30).toFixed(2)} GiB of bf16 weights (${shapes.size} tensors) in ${result.loadS.toFixed(1)} s`);
    const imageProcessor = family.imageProcessor!(config, spec.files, label, DEFAULT_IMAGE_LIMITS.maxPixels);
    const core = new BenchModel({
      dir: label,
      backend: be,
      family,
      config,
      decoder,
      encoder,
      imageProcessor,
      layout: null,
      tokenizer: null,
      template: null,
      eosTokenIds: [],
      weightBytes: loader.loadedBytes,
      warnings: [],
      imageLimits: { ...DEFAULT_IMAGE_LIMITS },
      visionCompute: compute,
    });
    const rgb = picture();
    const image = imageProcessor.process(rgb, DEFAULT_IMAGE_LIMITS.maxPixels);
    result.tiles = image.tiles.length;
    // One tile: the tower and the connector (and the projection), dense and with salience.
    const tile = (salience: boolean) => {
      const t = performance.now();
      encoder!.project(encoder!.encodeTile(image, 0, { salience }).units);
      return performance.now() - t;
    };
    tile(false);
    const times = Array.from({ length: spec.tileReps }, () => tile(false)).sort((a, b) => a - b);
    result.tileMs = times[Math.floor(times.length / 2)];
    result.tileSalienceMs = tile(true);
    {
      const enc = encoder!.encodeTile(image, 0, { salience: true });
      const outputs = { salience: Float32Array.from(enc.salience!), features: be.read(encoder!.project(enc.units)) };
      if (ref) {
        result.accuracy = compareTile(ref, outputs);
        log(
          `against stored on tile 0: features ${result.accuracy.relRms.toExponential(1)} relative RMS (max ${result.accuracy.maxRel.toExponential(1)} of the largest), kept set at p = 0.6 ${(100 * result.accuracy.keptOverlap).toFixed(1)}% the same`,
        );
      } else result.outputs = outputs;
    }
    log(`one ${spec.key === 'smolvlm' ? '512' : '384'} px tile: ${result.tileMs.toFixed(0)} ms (with salience ${result.tileSalienceMs.toFixed(0)} ms)`);

    const vocab = decoder.vocabSize,
      imageId = config.imageFacts!.tokenId;
    let seed = 12345;
    const text = (n: number) => Array.from({ length: n }, () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) % vocab);
    const prefix = text(24),
      question = text(32);
    for (const sparse of [false, true]) {
      const t0 = performance.now();
      const rows = await core.imageFeatures([rgb], sparse ? sparseVilaPrefill(0.6) : densePrefill);
      const t1 = performance.now();
      const cache = decoder.newCache();
      try {
        const ids = [...prefix, ...new Array<number>(rows[0].rows).fill(imageId), ...question];
        const r = await runTurn(core, {
          ids,
          images: rows,
          cache,
          slot0: 0,
          opts: { maxNewTokens: spec.decodeTokens, eosTokenIds: [], decodeSparsity: sparse ? 0.75 : 0 },
          t0,
          t1,
          visualIn: rows[0].denseRows,
          imageCached: false,
        });
        const s = r.stats;
        const phase: Phase = {
          encodeMs: s.imageMs,
          prefillMs: s.prefillMs,
          prefillTokens: s.prefilledTokens,
          decodeMs: s.decodeMs,
          decodeTokS: s.decodeTokensPerSecond,
          visualIn: s.visualTokensIn,
          visualKept: s.imageTokens,
          visualRetrieved: s.visualTokensRetrieved,
        };
        if (sparse) result.sparse = phase;
        else result.dense = phase;
        log(
          `${sparse ? 'SparseVILA 0.6 / 0.75' : 'dense'}: image ${(s.imageMs / 1000).toFixed(1)} s (${result.tiles} tiles), prefill ${s.prefilledTokens} tokens ${(s.prefillMs / 1000).toFixed(2)} s ` +
            `(${s.prefillTokensPerSecond.toFixed(0)} tok/s), decode ${s.newTokens} tokens ${(s.decodeMs / 1000).toFixed(2)} s (${s.decodeTokensPerSecond.toFixed(1)} tok/s); visual ${s.visualTokensIn} in, ${s.imageTokens} kept, ${s.visualTokensRetrieved} per decode step`,
        );
      } finally {
        decoder.freeCache(cache);
        for (const r of rows) be.free(r.features);
      }
    }
  } catch (e) {
    result.error = (e as Error).message;
    log(`FAILED: ${result.error}`);
  } finally {
    result.maxRss = process.resourceUsage().maxRSS * 1024;
    await be.close();
  }
  return result;
}

const started = performance.now();
const only = process.env.SPARSEVILA_BENCH_MODELS?.split(',').map((s) => s.trim());
const results: VlmResult[] = [];
const threads = 2;
const probes = await (async () => {
  const be = await WasmBackend.create({ threads, simd });
  try {
    return { readGBs: be.probeReadBandwidth(), peakGflops: be.probePeakFlops() };
  } finally {
    await be.close();
  }
})();
console.log(`machine limits (2 threads): read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`);
for (const spec of [SMOLVLM, VILA]) {
  if (only && !only.includes(spec.key)) continue;
  console.log(`${spec.name} (random bf16 weights, ${threads} threads):`);
  const stored = await benchVlm(spec, threads, 'stored');
  results.push(stored, await benchVlm(spec, threads, 'int16', stored.outputs));
  stored.outputs = undefined;
}
const wallS = (performance.now() - started) / 1000;

const s1 = (ms: number) => (ms / 1000).toFixed(2);
const split = (p: Phase | undefined) => {
  if (!p) return ['—', '—', '—', '—', '—'];
  const total = p.encodeMs + p.prefillMs + p.decodeMs;
  const pc = (x: number) => `${s1(x)} (${((100 * x) / total).toFixed(0)}%)`;
  return [pc(p.encodeMs), pc(p.prefillMs), pc(p.decodeMs), s1(total), `${p.visualIn} / ${p.visualKept} / ${p.visualRetrieved}`];
};
const towerHeader = [
  'model shape',
  'tile',
  'vision matmuls',
  'encode one tile ms (with salience)',
  'llama.cpp CLIP F16 *',
  'target',
  'met',
  'tiles of 2048×1536',
  'image s (dense)',
  'vs stored: features rel. RMS / max / kept set same',
];
const towerRows = results.map((r) => [
  r.spec.name,
  r.spec.key === 'smolvlm' ? 'SigLIP-B/16 512 px' : 'SigLIP-so400m/14 384 px',
  r.compute,
  `${r.tileMs.toFixed(0)} (${r.tileSalienceMs.toFixed(0)})`,
  r.spec.refTileMs ? `${r.spec.refTileMs}` : '—',
  r.spec.targetTileMs ? `≤ ${r.spec.targetTileMs}` : '—',
  r.spec.targetTileMs ? (r.tileMs <= r.spec.targetTileMs ? 'yes' : 'no') : '—',
  `${r.tiles}`,
  r.dense ? s1(r.dense.encodeMs) : '—',
  r.accuracy ? `${r.accuracy.relRms.toExponential(1)} / ${r.accuracy.maxRel.toExponential(1)} / ${(100 * r.accuracy.keptOverlap).toFixed(1)}%` : '(reference)',
]);
const e2eHeader = [
  'model shape',
  'vision matmuls',
  'method',
  'encode s',
  'prefill s',
  'decode s',
  'total s',
  'visual in / kept / per decode step',
  'prefill tok/s',
  'decode tok/s',
];
const e2eRows = results.flatMap((r) =>
  (['dense', 'sparse'] as const).map((k) => {
    const p = r[k];
    return [
      r.spec.name,
      r.compute,
      k === 'dense' ? 'dense' : 'SparseVILA 0.6 / 0.75',
      ...split(p),
      p ? ((p.prefillTokens * 1000) / p.prefillMs).toFixed(0) : '—',
      p ? p.decodeTokS.toFixed(1) : '—',
    ];
  }),
);
const failures = results.filter((r) => r.error).map((r) => `- ${r.spec.name} (${r.compute}): FAILED: ${r.error}`);
console.log('');
console.log(markdownTable(towerHeader, towerRows));
console.log('');
console.log(markdownTable(e2eHeader, e2eRows));
for (const f of failures) console.log(f);
console.log(`wall time ${wallS.toFixed(0)} s`);

if (only) {
  console.log('(a subset was run: docs/BENCHMARKS.md is left as it was)');
} else {
  const body = [
    '## Whole VLMs: tower, connector and language model (`npm run bench:model`)',
    '',
    `Machine: ${machineDescription([`kernel build: ${level}`, `probes at 2 threads: read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`])}. ` +
      `Run on ${new Date().toISOString().slice(0, 10)}; this part took ${(wallS / 60).toFixed(1)} min.`,
    '',
    "Random bf16 weights of the real shapes, loaded through each family's registry row (the tensor list is what the family's loader asks for): " +
      'SmolVLM-256M (Idefics3: SigLIP-B/16, 12 layers, hidden 768, FFN 3072, 12 heads, 512 px tiles, pixel shuffle 4 → 64 tokens per tile; its 30-layer Llama, hidden 576) and ' +
      'VILA1.5-3B (SigLIP-so400m/14 at 384 px, 27 layers of which 26 run (mm_vision_select_layer −2), hidden 1152, FFN 4304, 16 heads; mlp_downsample → 196 tokens; its 32-layer Llama, hidden 2560). ' +
      "A tile: the tower and the connector with the projection (median of the timed runs after a warm-up). The image: a 2048×1536 picture through the family's processor " +
      '(SmolVLM: resized to a longest edge of 2048, 4 × 3 tiles of 512 plus the global tile = 13 tiles; VILA: squashed to 384). ' +
      `End to end: the engine's turn (runTurn) on 24 text tokens, the image's rows and 32 question tokens, then ${SMOLVLM.decodeTokens} (SmolVLM) / ${VILA.decodeTokens} (VILA) decoded tokens; ` +
      "SparseVILA prunes 60% of each tile's tokens by the tower's column-mean attention and retrieves 25% of the visual tokens per layer and KV head for decode.",
    '',
    "Each model runs twice, with the tower's matmuls `stored` (f32 math over the bf16 weights: the default, parity with the references) and `int16` " +
      '(`--vision-compute int16`: weights quantized at load per output row to 12-bit integers, activations per row, integer dot products). ' +
      "The last column of the first table compares int16's tile 0 with stored's on the same weights and picture: the projected features' relative RMS error and " +
      'largest error (relative to the largest value), and how much of the kept set at p = 0.6 (by salience) is the same. ' +
      'f32 GEMMs here run at 83–98 GFLOPS, the wasm relaxed-FMA ceiling (the probe above), and a SigLIP-B tile is 213 GFLOP, so stored cannot reach 2.2 s; int16 GEMMs run at 150–180.',
    '',
    markdownTable(towerHeader, towerRows),
    '',
    "\\* llama.cpp's figure is not from this run: its CLIP encoder (F16, 2 threads) on such a tile, measured elsewhere on the same kind of machine, as the issue quotes it.",
    '',
    markdownTable(e2eHeader, e2eRows),
    ...(failures.length ? ['', ...failures] : []),
  ].join('\n');
  console.log(`wrote ${writeSection('vlm', body)}`);
}

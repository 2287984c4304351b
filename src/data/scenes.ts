// Synthetic visual-QA scenes for the project's own default model and its accuracy harness: several
// objects (shape, colour, size, some with a letter or digit inside) on a textured background, each
// scene with a multi-turn episode of short-answer questions about different objects or regions.
// Everything is a pure function of the seed, so any split can be regenerated exactly.
import { ensureOutputDir, writeFileChecked } from '../base/files.js';
import { OptionError } from '../base/errors.js';
import path from 'node:path';
import sharp from 'sharp';

export const SHAPES = ['circle', 'square', 'triangle', 'diamond'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white'] as const;
export const GLYPHS = ['A', 'E', 'H', 'K', 'T', 'X', '2', '3', '5', '7'] as const;
/** The 3 x 3 regions of the image, row by row. */
export const REGIONS = [
  'top left',
  'top middle',
  'top right',
  'middle left',
  'centre',
  'middle right',
  'bottom left',
  'bottom middle',
  'bottom right',
] as const;
export const QUESTION_TYPES = ['colour', 'shape', 'glyph', 'exists', 'count', 'relation'] as const;

export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];
export type QuestionType = (typeof QUESTION_TYPES)[number];

const RGB: Record<Colour, [number, number, number]> = {
  red: [220, 40, 40],
  green: [40, 180, 60],
  blue: [40, 90, 230],
  yellow: [240, 220, 40],
  purple: [150, 60, 200],
  orange: [250, 140, 30],
  white: [245, 245, 245],
};

export interface SceneObject {
  shape: Shape;
  colour: Colour;
  size: 'small' | 'large';
  /** The letter or digit drawn inside (large objects only), or null. */
  glyph: string | null;
  /** Region index into REGIONS (one object per region). */
  region: number;
  /** Centre and radius in pixels. */
  x: number;
  y: number;
  r: number;
}

export interface Question {
  type: QuestionType;
  question: string;
  answer: string;
}

export interface Scene {
  seed: number;
  size: number;
  objects: SceneObject[];
  /** Background: two colours and the stripe period of its texture. */
  background: { a: [number, number, number]; b: [number, number, number]; period: number; angle: number };
  /** The episode: 3 to 5 questions, each about a different object or region. */
  episode: Question[];
}

/** A small deterministic generator (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const shuffle = <T>(r: () => number, xs: T[]): T[] => {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
};
const NUMBERS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];
const name = (o: SceneObject) => `${o.colour} ${o.shape}`;
/** "a" or "an" before a word. */
const article = (w: string) => (/^[aeiou]/.test(w) ? 'an' : 'a');

/**
 * A centre within `jitter` of c, on the centre of a cell of the image's 16 x 16 grid (the 14-px
 * patches of a 224-px image), chosen by u in [0, 1); the grid cell nearest c if none is in reach.
 * Objects sit on the patch grid so that a shape's silhouette and a glyph (drawn inside the centre
 * cell) look the same to the vision tower wherever they are: a tower trained from scratch on the
 * CPU then learns shapes and glyphs in minutes (off the grid, a 4-layer tower had not learnt shape
 * after 200 steps of direct supervision).
 */
function onGrid(c: number, jitter: number, size: number, u: number): number {
  const g = size / 16;
  const lo = Math.ceil((c - jitter) / g - 0.5),
    hi = Math.floor((c + jitter) / g - 0.5);
  const k = hi >= lo ? lo + Math.floor(u * (hi - lo + 1)) : Math.round(c / g - 0.5);
  return (k + 0.5) * g;
}

/** A scene and its episode from a seed; size is the image side in pixels (default 224). */
export function makeScene(seed: number, size = 224): Scene {
  const r = rng(seed);
  const cell = size / 3;
  const n = 3 + Math.floor(r() * 4); // 3..6 objects
  const regions = shuffle(r, [...REGIONS.keys()])
    .slice(0, n)
    .sort((a, b) => a - b);
  // Every (colour, shape) pair at most once, so "the red circle" always names one object.
  const used = new Set<string>();
  const objects: SceneObject[] = regions.map((region) => {
    let shape: Shape, colour: Colour;
    do {
      shape = pick(r, SHAPES);
      colour = pick(r, COLOURS);
    } while (used.has(`${colour} ${shape}`));
    used.add(`${colour} ${shape}`);
    const size_ = r() < 0.5 ? 'small' : 'large';
    const rad = (size_ === 'large' ? 0.36 : 0.22) * cell;
    const jitter = cell / 2 - rad - 2;
    const glyph = size_ === 'large' && r() < 0.6 ? pick(r, GLYPHS) : null;
    const x = onGrid(((region % 3) + 0.5) * cell, jitter, size, r());
    const y = onGrid((Math.floor(region / 3) + 0.5) * cell, jitter, size, r());
    return { shape, colour, size: size_, glyph, region, x, y, r: rad };
  });
  const bgA = [70 + Math.floor(r() * 60), 70 + Math.floor(r() * 60), 70 + Math.floor(r() * 60)] as [number, number, number];
  const background = { a: bgA, b: bgA.map((v) => v - 25) as [number, number, number], period: 6 + Math.floor(r() * 10), angle: Math.floor(r() * 180) };
  const scene: Scene = { seed, size, objects, background, episode: [] };
  scene.episode = makeEpisode(scene, r);
  return scene;
}

function makeEpisode(s: Scene, r: () => number): Question[] {
  const want = 3 + Math.floor(r() * 3); // 3..5 questions
  const out: Question[] = [];
  const usedObjects = new Set<SceneObject>();
  const types = shuffle(r, [...QUESTION_TYPES]);
  for (let attempt = 0; out.length < want && attempt < 40; attempt++) {
    const q = question(s, types[attempt % types.length], r, usedObjects);
    if (q) out.push(q);
  }
  return out;
}

// One question of a type about an object or region not asked about yet, or null when none fits.
function question(s: Scene, type: QuestionType, r: () => number, used: Set<SceneObject>): Question | null {
  const fresh = s.objects.filter((o) => !used.has(o));
  const take = (o: SceneObject) => {
    used.add(o);
    return o;
  };
  switch (type) {
    case 'colour': {
      if (!fresh.length) return null;
      const o = take(pick(r, fresh));
      return { type, question: `What colour is the ${o.shape} in the ${REGIONS[o.region]}?`, answer: o.colour };
    }
    case 'shape': {
      if (!fresh.length) return null;
      const o = take(pick(r, fresh));
      return { type, question: `What shape is in the ${REGIONS[o.region]}?`, answer: o.shape };
    }
    case 'glyph': {
      const g = fresh.filter((o) => o.glyph);
      if (!g.length) return null;
      const o = take(pick(r, g));
      return { type, question: `Which letter or digit is on the ${name(o)}?`, answer: o.glyph! };
    }
    case 'exists': {
      const present = r() < 0.5 && fresh.length > 0;
      if (present) {
        const o = take(pick(r, fresh));
        return { type, question: `Is there ${article(o.colour)} ${name(o)}?`, answer: 'yes' };
      }
      const names = new Set(s.objects.map(name));
      for (let i = 0; i < 20; i++) {
        const c = pick(r, COLOURS),
          sh = pick(r, SHAPES);
        if (!names.has(`${c} ${sh}`)) return { type, question: `Is there ${article(c)} ${c} ${sh}?`, answer: 'no' };
      }
      return null;
    }
    case 'count': {
      if (r() < 0.5) {
        const sh = pick(r, SHAPES);
        const n = s.objects.filter((o) => o.shape === sh).length;
        return { type, question: `How many ${sh}s are there?`, answer: NUMBERS[n] };
      }
      const c = pick(r, COLOURS);
      const n = s.objects.filter((o) => o.colour === c).length;
      return { type, question: `How many ${c} objects are there?`, answer: NUMBERS[n] };
    }
    case 'relation': {
      if (fresh.length < 2) return null;
      const [a, b] = shuffle(r, [...fresh]).slice(0, 2);
      const horizontal = Math.abs(a.x - b.x) >= Math.abs(a.y - b.y);
      // Only ask where the two are clearly apart along the axis asked about.
      if (horizontal && Math.abs(a.x - b.x) < s.size / 6) return null;
      if (!horizontal && Math.abs(a.y - b.y) < s.size / 6) return null;
      take(a);
      take(b);
      const first = horizontal ? (a.x < b.x ? a : b) : a.y < b.y ? a : b;
      return { type, question: `Which is further ${horizontal ? 'left' : 'up'}, the ${name(a)} or the ${name(b)}?`, answer: name(first) };
    }
  }
}

/**
 * Every question the episode templates can ask about a scene, with its answer: the colour and the
 * shape of each object by region, the glyph of each object that has one, "is there" for every
 * colour-shape pair, the count of every shape and colour, and "further left/up" for each clearly
 * separated pair in both orders. For training (many questions per image cost little next to the
 * image); episodes draw from the same templates.
 */
export function questionBank(s: Scene): Question[] {
  const out: Question[] = [];
  for (const o of s.objects) {
    out.push({ type: 'colour', question: `What colour is the ${o.shape} in the ${REGIONS[o.region]}?`, answer: o.colour });
    out.push({ type: 'shape', question: `What shape is in the ${REGIONS[o.region]}?`, answer: o.shape });
    if (o.glyph) out.push({ type: 'glyph', question: `Which letter or digit is on the ${name(o)}?`, answer: o.glyph });
  }
  const names = new Set(s.objects.map(name));
  for (const c of COLOURS)
    for (const sh of SHAPES) out.push({ type: 'exists', question: `Is there ${article(c)} ${c} ${sh}?`, answer: names.has(`${c} ${sh}`) ? 'yes' : 'no' });
  for (const sh of SHAPES) out.push({ type: 'count', question: `How many ${sh}s are there?`, answer: NUMBERS[s.objects.filter((o) => o.shape === sh).length] });
  for (const c of COLOURS)
    out.push({ type: 'count', question: `How many ${c} objects are there?`, answer: NUMBERS[s.objects.filter((o) => o.colour === c).length] });
  for (const a of s.objects) {
    for (const b of s.objects) {
      if (a === b) continue;
      const horizontal = Math.abs(a.x - b.x) >= Math.abs(a.y - b.y);
      if (horizontal ? Math.abs(a.x - b.x) < s.size / 6 : Math.abs(a.y - b.y) < s.size / 6) continue;
      const first = horizontal ? (a.x < b.x ? a : b) : a.y < b.y ? a : b;
      out.push({ type: 'relation', question: `Which is further ${horizontal ? 'left' : 'up'}, the ${name(a)} or the ${name(b)}?`, answer: name(first) });
    }
  }
  return out;
}

// A 5 x 7 pixel font for the glyphs (each row a 5-bit mask, top row first).
const FONT: Record<string, number[]> = {
  A: [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  E: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
  H: [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  K: [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
  T: [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
  X: [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
  2: [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
  3: [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
  5: [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
  7: [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
};

const hex = (c: readonly number[]) => `#${c.map((v) => Math.max(0, Math.min(255, v)).toString(16).padStart(2, '0')).join('')}`;

/** The scene as an SVG document (shapes, glyphs as pixel-font rectangles, striped background). */
export function sceneSvg(s: Scene): string {
  const S = s.size,
    bg = s.background;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${S}" height="${S}" shape-rendering="crispEdges">`,
    `<defs><pattern id="bg" width="${bg.period}" height="${bg.period}" patternUnits="userSpaceOnUse" patternTransform="rotate(${bg.angle})">`,
    `<rect width="${bg.period}" height="${bg.period}" fill="${hex(bg.a)}"/><rect width="${bg.period / 2}" height="${bg.period}" fill="${hex(bg.b)}"/></pattern></defs>`,
    `<rect width="${S}" height="${S}" fill="url(#bg)"/>`,
  ];
  for (const o of s.objects) {
    const fill = hex(RGB[o.colour]);
    const { x, y, r } = o;
    const f = (v: number) => v.toFixed(2);
    if (o.shape === 'circle') parts.push(`<circle cx="${f(x)}" cy="${f(y)}" r="${f(r)}" fill="${fill}"/>`);
    else if (o.shape === 'square')
      parts.push(`<rect x="${f(x - r * 0.85)}" y="${f(y - r * 0.85)}" width="${f(r * 1.7)}" height="${f(r * 1.7)}" fill="${fill}"/>`);
    else if (o.shape === 'triangle')
      parts.push(`<polygon points="${f(x)},${f(y - r)} ${f(x + r * 0.95)},${f(y + r * 0.75)} ${f(x - r * 0.95)},${f(y + r * 0.75)}" fill="${fill}"/>`);
    else parts.push(`<polygon points="${f(x)},${f(y - r)} ${f(x + r)},${f(y)} ${f(x)},${f(y + r)} ${f(x - r)},${f(y)}" fill="${fill}"/>`);
    if (o.glyph) {
      const rows = FONT[o.glyph];
      // 5 x 7 font pixels of size/112 px: at 224 px, 10 x 14 px inside the object's centre patch.
      const px = s.size / 112;
      const gx = x - 2.5 * px,
        gy = y - 3.5 * px;
      const ink = o.colour === 'white' || o.colour === 'yellow' ? '#101010' : '#f8f8f8';
      rows.forEach((bits, row) => {
        for (let col = 0; col < 5; col++) {
          if (bits & (1 << (4 - col))) parts.push(`<rect x="${f(gx + col * px)}" y="${f(gy + row * px)}" width="${px}" height="${px}" fill="${ink}"/>`);
        }
      });
    }
  }
  parts.push('</svg>');
  return parts.join('');
}

/** The scene rendered to PNG bytes. */
export async function renderScene(s: Scene): Promise<Buffer> {
  return sharp(Buffer.from(sceneSvg(s)))
    .removeAlpha()
    .png({ compressionLevel: 9 })
    .toBuffer();
}

/** Seeds of a split: disjoint ranges, so train, validation and test never share a scene. */
export function splitSeeds(split: 'train' | 'validation' | 'test', count: number): number[] {
  const base = { train: 1_000_000, validation: 2_000_000, test: 3_000_000 }[split];
  if (count > 1_000_000) throw new OptionError(`a split holds at most 1000000 scenes, asked for ${count}`);
  return Array.from({ length: count }, (_, i) => base + i);
}

/**
 * One line of a split's `episodes.jsonl`: the image file (relative to the file), its questions, and
 * the scene's objects (what the training recipe derives its auxiliary per-patch labels from).
 */
export interface EpisodeRecord {
  seed: number;
  image: string;
  questions: Question[];
  objects?: SceneObject[];
  bank?: Question[];
}

/**
 * Writes `count` scenes of a split into dir: `<seed>.png` each and `episodes.jsonl` (one
 * EpisodeRecord per line; with `bank`, each scene's question bank too). Returns the path of episodes.jsonl.
 */
export async function writeSplit(
  dir: string,
  split: 'train' | 'validation' | 'test',
  count: number,
  size = 224,
  opts: { bank?: boolean } = {},
): Promise<string> {
  ensureOutputDir(dir);
  const lines: string[] = [];
  for (const seed of splitSeeds(split, count)) {
    const s = makeScene(seed, size);
    const image = `${seed}.png`;
    writeFileChecked(path.join(dir, image), await renderScene(s));
    lines.push(
      JSON.stringify({ seed, image, questions: s.episode, objects: s.objects, ...(opts.bank ? { bank: questionBank(s) } : {}) } satisfies EpisodeRecord),
    );
  }
  const file = path.join(dir, 'episodes.jsonl');
  writeFileChecked(file, lines.join('\n') + '\n');
  return file;
}

// The synthetic scenes of the default model's task: determinism, unambiguous questions, answers
// that follow from the scene, and pixels that show what the scene says.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { EpisodeRecord, QUESTION_TYPES, Question, REGIONS, Scene, makeScene, questionBank, renderScene, splitSeeds, writeSplit } from '../src/data/scenes.js';
import { tempDir } from './helpers.js';

const RGB: Record<string, number[]> = {
  red: [220, 40, 40],
  green: [40, 180, 60],
  blue: [40, 90, 230],
  yellow: [240, 220, 40],
  purple: [150, 60, 200],
  orange: [250, 140, 30],
  white: [245, 245, 245],
};
const NUMBERS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];

/** Re-derives a question's answer from the scene (and fails on an unknown question form). */
function checkAnswer(s: Scene, q: Question): void {
  const byName = (n: string) => s.objects.find((o) => `${o.colour} ${o.shape}` === n);
  let m: RegExpMatchArray | null;
  if ((m = q.question.match(/^What colour is the (\w+) in the (.+)\?$/))) {
    const o = s.objects.find((x) => REGIONS[x.region] === m![2])!;
    assert.deepEqual([o.shape, o.colour], [m[1], q.answer]);
  } else if ((m = q.question.match(/^What shape is in the (.+)\?$/))) {
    assert.equal(s.objects.find((x) => REGIONS[x.region] === m![1])!.shape, q.answer);
  } else if ((m = q.question.match(/^Which letter or digit is on the (\w+ \w+)\?$/))) {
    assert.equal(byName(m[1])!.glyph, q.answer);
  } else if ((m = q.question.match(/^Is there (a|an) (\w+ \w+)\?$/))) {
    assert.equal(m[1], /^[aeiou]/.test(m[2]) ? 'an' : 'a', q.question);
    assert.equal(byName(m[2]) ? 'yes' : 'no', q.answer);
  } else if ((m = q.question.match(/^How many (\w+?)s are there\?$/))) {
    assert.equal(NUMBERS[s.objects.filter((o) => o.shape === m![1]).length], q.answer);
  } else if ((m = q.question.match(/^How many (\w+) objects are there\?$/))) {
    assert.equal(NUMBERS[s.objects.filter((o) => o.colour === m![1]).length], q.answer);
  } else if ((m = q.question.match(/^Which is further (left|up), the (\w+ \w+) or the (\w+ \w+)\?$/))) {
    const a = byName(m[2])!,
      b = byName(m[3])!;
    const first = m[1] === 'left' ? (a.x < b.x ? a : b) : a.y < b.y ? a : b;
    assert.equal(`${first.colour} ${first.shape}`, q.answer);
  } else {
    assert.fail(`unknown question form: ${q.question}`);
  }
}

describe('synthetic scenes', () => {
  it('are a pure function of the seed (scene, episode and PNG bytes)', async () => {
    assert.deepEqual(makeScene(42), makeScene(42));
    assert.notDeepEqual(makeScene(42), makeScene(43));
    assert.deepEqual(await renderScene(makeScene(7)), await renderScene(makeScene(7)));
  });

  it('ask unambiguous questions whose answers follow from the scene', () => {
    const seen = new Set<string>();
    for (const seed of splitSeeds('train', 200)) {
      const s = makeScene(seed);
      assert.ok(s.objects.length >= 3 && s.objects.length <= 6);
      assert.equal(new Set(s.objects.map((o) => o.region)).size, s.objects.length, 'one object per region');
      assert.equal(new Set(s.objects.map((o) => `${o.colour} ${o.shape}`)).size, s.objects.length, 'colour + shape names one object');
      assert.ok(s.episode.length >= 3 && s.episode.length <= 5, `seed ${seed}: ${s.episode.length} questions`);
      for (const q of s.episode) {
        seen.add(q.type);
        checkAnswer(s, q);
      }
    }
    assert.deepEqual([...seen].sort(), [...QUESTION_TYPES].sort(), 'every question type occurs');
  });

  it('question banks hold every episode question and only right answers', () => {
    for (const seed of splitSeeds('train', 50)) {
      const s = makeScene(seed),
        bank = questionBank(s);
      for (const q of bank) checkAnswer(s, q);
      const key = (q: Question) => `${q.question} ${q.answer}`;
      const all = new Set(bank.map(key));
      assert.equal(all.size, bank.length, 'no question twice');
      for (const q of s.episode) assert.ok(all.has(key(q)), `seed ${seed}: ${q.question}`);
      // 2 per object (+1 per glyph), 28 "is there", 11 counts.
      assert.ok(bank.length >= 2 * s.objects.length + 39);
    }
  });

  it('render each object in its colour, at 224 px', async () => {
    for (const seed of splitSeeds('test', 10)) {
      const s = makeScene(seed);
      const { data, info } = await sharp(await renderScene(s))
        .raw()
        .toBuffer({ resolveWithObject: true });
      assert.deepEqual([info.width, info.height, info.channels], [224, 224, 3]);
      for (const o of s.objects) {
        // A point inside the shape and clear of the glyph.
        const [px, py] = o.shape === 'triangle' ? [o.x + 0.5 * o.r, o.y + 0.6 * o.r] : [o.x + 0.6 * o.r, o.y];
        const i = (Math.round(py) * info.width + Math.round(px)) * 3;
        assert.deepEqual([data[i], data[i + 1], data[i + 2]], RGB[o.colour], `seed ${seed}: ${o.colour} ${o.shape}`);
      }
    }
  });

  it('place objects on the 14-px patch grid, inside their region, with the glyph in the centre patch', async () => {
    const seeds = splitSeeds('train', 300);
    for (const seed of seeds) {
      const s = makeScene(seed),
        cell = 224 / 3;
      for (const o of s.objects) {
        assert.equal((o.x - 7) % 14, 0, `seed ${seed}: x ${o.x}`);
        assert.equal((o.y - 7) % 14, 0, `seed ${seed}: y ${o.y}`);
        // The whole object inside its region's cell.
        const cx = (o.region % 3) * cell,
          cy = Math.floor(o.region / 3) * cell;
        assert.ok(
          o.x - o.r >= cx && o.x + o.r <= cx + cell && o.y - o.r >= cy && o.y + o.r <= cy + cell,
          `seed ${seed}: ${o.colour} ${o.shape} leaves its region`,
        );
      }
    }
    // The glyph's ink lies in the object's centre patch (10 x 14 px of a 14 x 14 patch).
    const s = makeScene(seeds.find((seed) => makeScene(seed).objects.some((o) => o.glyph && o.colour !== 'white' && o.colour !== 'yellow'))!);
    const o = s.objects.find((x) => x.glyph && x.colour !== 'white' && x.colour !== 'yellow')!;
    const { data } = await sharp(await renderScene(s))
      .raw()
      .toBuffer({ resolveWithObject: true });
    const ink: [number, number][] = [];
    for (let y = o.y - 14; y < o.y + 14; y++) for (let x = o.x - 14; x < o.x + 14; x++) if (data[(y * 224 + x) * 3] === 0xf8) ink.push([x, y]);
    assert.ok(ink.length > 10, `${ink.length} ink pixels`);
    for (const [x, y] of ink)
      assert.ok(x >= o.x - 5 && x < o.x + 5 && y >= o.y - 7 && y < o.y + 7, `ink at ${x},${y} outside the centre patch of ${o.x},${o.y}`);
  });

  it('writeSplit writes the images and one episode line per scene', async () => {
    const dir = tempDir();
    const file = await writeSplit(dir, 'validation', 3, 224, { bank: true });
    const recs = readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as EpisodeRecord);
    assert.deepEqual(
      recs.map((r) => r.seed),
      splitSeeds('validation', 3),
    );
    for (const r of recs) {
      assert.deepEqual(r.questions, makeScene(r.seed).episode);
      assert.deepEqual(r.objects, makeScene(r.seed).objects);
      assert.deepEqual(r.bank, questionBank(makeScene(r.seed)));
      assert.deepEqual(readFileSync(path.join(dir, r.image)), await renderScene(makeScene(r.seed)));
    }
  });

  it('splits never share a seed', () => {
    const t = new Set(splitSeeds('train', 1000));
    for (const s of [...splitSeeds('validation', 1000), ...splitSeeds('test', 1000)]) assert.ok(!t.has(s));
  });
});

// The baselines' selection rules on small hand-made cases, against what their papers' rules pick.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { visionZipContextual, visionZipMerge, visionZipSelect } from '../src/sparsity/visionzip.js';
import { iqrOutlierCount, pruMergeMerge, pruMergeSelect, quantile } from '../src/sparsity/prumerge.js';

describe('VisionZip', () => {
  // 8 tokens; keys of 2 heads x 2 dims: head 0 = v + w, head 1 = v - w, so the head mean is v. The
  // large common w would dominate a cosine of the concatenated keys; VisionZip averages the heads.
  const salience = [0.05, 0.30, 0.02, 0.20, 0.01, 0.25, 0.10, 0.07];
  const v = [[1, 0], [0, 0], [0.9, 0.1], [0, 0], [0, 1], [0, 0], [0.2, 0.8], [-1, 0.1]];
  const w = [5, -3];
  const keys = v.flatMap(([a, b]) => [a + w[0], b + w[1], a - w[0], b - w[1]]);

  it('keeps the top tokens by class-token attention, merges the rest into every step-th remaining token by key similarity', () => {
    const s = visionZipSelect(salience, keys, 2, 2, 3, 2);
    assert.deepEqual(s.dominant, [1, 3, 5]);
    // Remaining 0, 2, 4, 6, 7; step floor(5 / 2) = 2: targets are remaining[0] and remaining[2].
    assert.deepEqual(s.targets, [0, 4]);
    // 2 ~ (1, 0) joins 0; 6 ~ (0.2, 0.8) and 7 ~ (-1, 0.1) are closer to (0, 1): they join 4.
    assert.deepEqual(s.members, [[2], [6, 7]]);
    const out = visionZipMerge(Float32Array.from({ length: 8 }, (_, i) => 10 + i), 1, s);
    // Dominant rows in order, then each target plus the mean of its members.
    assert.deepEqual(Array.from(out), [11, 13, 15, 10 + 12, 14 + (16 + 17) / 2]);
  });

  it('splits a budget as the paper does (64 = 54 + 10) and checks its inputs', () => {
    assert.deepEqual([64, 128, 192].map(visionZipContextual), [10, 20, 30]);
    assert.throws(() => visionZipSelect(salience, keys, 2, 2, 6, 3), /6 \+ 3 tokens of 8/);
    assert.throws(() => visionZipSelect(salience, keys.slice(1), 2, 2, 3, 2), /31 key values for 8 tokens of 4/);
  });
});

describe('PruMerge', () => {
  const salience = [0.02, 0.03, 0.02, 0.025, 0.5, 0.02, 0.03, 0.022, 0.028, 0.02, 0.4, 0.03, 0.021, 0.027, 0.024, 0.026];
  const keys = salience.flatMap((_, i) => i === 4 ? [1, 0] : i === 10 ? [0, 1] : i === 0 ? [0.9, 0.1] : i === 1 ? [0.8, 0.3] : [-1, -0.5]);

  it('keeps the outliers above Q3 + 1.5 IQR of the class-token attention (numpy percentiles)', () => {
    assert.equal(quantile(salience, 0.25), 0.02075);
    assert.ok(Math.abs(quantile(salience, 0.75) - 0.03) < 1e-15);
    assert.equal(iqrOutlierCount(salience), 2);
    const s = pruMergeSelect(salience, keys, 2, { k: 2 });
    assert.deepEqual(s.kept, [4, 10]);
    // The two most key-similar other tokens of each kept token, most similar first.
    assert.deepEqual(s.neighbours, [[0, 1], [1, 0]]);
    const out = pruMergeMerge(Float32Array.from({ length: 16 }, (_, i) => i), 1, salience, s);
    // x_i + sum_j a_j x_j over the neighbours.
    assert.deepEqual(Array.from(out).map((x) => Math.round(x * 1e6) / 1e6), [4 + 0.02 * 0 + 0.03 * 1, 10 + 0.03 * 1 + 0.02 * 0]);
  });

  it('a fixed budget replaces the outlier count (ties to the earlier token)', () => {
    assert.deepEqual(pruMergeSelect(salience, keys, 2, { budget: 3, k: 2 }).kept, [1, 4, 10]);
  });
});

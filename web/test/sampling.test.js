// Sampling: the filtered distribution against the Python sampler's, seeds, and the greedy limits.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { samplingProbs } from '../src/sampling.js';
import { maxAbsDiff, open, orts, reference, rowsOf } from './helpers.js';

const [{ ort }] = await orts();

describe('sampling', () => {
  for (const model of ['small', 'tiny']) {
    it(`temperature/top-k/top-p distribution of the ${model} model's last logits equals Python's`, () => {
      const ref = reference(model);
      const { temperature, top_k: topK, top_p: topP } = ref.sample;
      const [B, T, V] = ref.logits.dims;
      for (let b = 0; b < B; b++) {
        const last = ref.logits.data.subarray((b * T + T - 1) * V, (b * T + T) * V);
        const probs = samplingProbs(last, temperature, topK, topP);
        const want = ref.sampleProbs.data.subarray(b * V, (b + 1) * V);
        assert.ok(maxAbsDiff(probs, want) <= 1e-9, `row ${b}`);
        assert.deepEqual(Array.from(probs, (p) => p > 0), Array.from(want, (p) => p > 0));
      }
    });
  }

  it('the same seed gives the same tokens, another seed other tokens; topK 1 is greedy', async () => {
    const ref = reference('tiny');
    const s = await open(ref.artifact, ort, 2);
    await s.stream(ref.ids);
    const opts = { maxNewTokens: 24, temperature: 1.0 };
    const a = await s.fork().generate([], { ...opts, seed: 7 });
    const b = await s.fork().generate([], { ...opts, seed: 7 });
    const c = await s.fork().generate([], { ...opts, seed: 8 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    const k1 = await s.fork().generate([], { ...opts, topK: 1, seed: 3 });
    assert.deepEqual(k1, rowsOf(ref.greedy));
    const p0 = await s.fork().generate([], { ...opts, topP: 1e-9, seed: 3 });
    assert.deepEqual(p0, rowsOf(ref.greedy));
  });

  it('the smallest temperatures give the largest logit all the probability, never NaN', () => {
    const logits = Float32Array.from([0.5, -2.0, 3.25, 1.0, 3.0]);
    for (const t of [5e-324, 1e-300, 1e-30]) {
      assert.deepEqual(Array.from(samplingProbs(logits, t, null, null)), [0, 0, 1, 0, 0]);
      assert.deepEqual(Array.from(samplingProbs(logits, t, 2, 0.5)), [0, 0, 1, 0, 0]);
    }
  });
});

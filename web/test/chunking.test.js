// Feeding a text in one call or in chunks of any sizes gives the same logits and the same state.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { maxAbsDiff, open, orts, reference, relDiff, rowsOf } from './helpers.js';

const ref = reference('tiny');  // batch 2, segment_len 16
const rows = rowsOf(ref.ids);
const T = rows[0].length;
const N = ref.segment_len;

/** Chunk sizes covering 0, 1, N-1, N, N+1, 2N+3 and the rest. */
function chunkSizes() {
  const sizes = [0, 1, N - 1, N, 0, N + 1, 2 * N + 3, 7, 1, 1, 3 * N - 2];
  const out = []; let used = 0;
  for (let i = 0; used < T; i++) {
    const n = Math.min(sizes[i % sizes.length], T - used);
    out.push(n); used += n;
  }
  return out;
}

for (const { name, ort } of await orts()) {
  describe(`chunking invariance on ${name}`, () => {
    it('chunked feeds give the Python logits of the whole text and its state', async () => {
      const whole = await open(ref.artifact, ort, 2);
      await whole.feed(rows);
      const s = await open(ref.artifact, ort, 2);
      const V = s.vocabSize;
      const logits = new Float32Array(2 * T * V);
      let at = 0;
      for (const n of chunkSizes()) {
        const out = await s.feed(rows.map((r) => r.slice(at, at + n)));
        assert.deepEqual(out.dims, [2, n, V]);
        for (let b = 0; b < 2; b++) logits.set(out.data.subarray(b * n * V, (b + 1) * n * V), (b * T + at) * V);
        at += n;
      }
      assert.ok(maxAbsDiff(logits, ref.logits.data) <= 1e-4);
      assert.equal(s.tokensConsumed, whole.tokensConsumed);
      assert.deepEqual(s.pendingTokens, whole.pendingTokens);
      const a = s.state; const b = whole.state;
      // a segment finished by decode calls folds its memory write in the decode program: the same to rounding
      for (const k of Object.keys(b)) assert.ok(relDiff(a[k].data, b[k].data) <= 1e-5, `${k}: ${relDiff(a[k].data, b[k].data)}`);
    });

    it('stream returns the last logits of feed and the same state', async () => {
      const a = await open(ref.artifact, ort, 2);
      const b = await open(ref.artifact, ort, 2);
      const cut = 3 * N + 5;
      const full = await a.feed(rows.map((r) => r.slice(0, cut)));
      await b.stream(rows.map((r) => r.slice(0, 7)));
      const last = await b.stream(rows.map((r) => r.slice(7, cut)));
      assert.deepEqual(last?.dims, [2, a.vocabSize]);
      const V = a.vocabSize;
      for (let row = 0; row < 2; row++) {
        const want = full.data.subarray((row * cut + cut - 1) * V, (row * cut + cut) * V);
        assert.ok(maxAbsDiff(last.data.subarray(row * V, (row + 1) * V), want) <= 1e-5);
      }
      assert.deepEqual(a.pendingTokens, b.pendingTokens);
    });
  });
}

// Bad input throws a typed error and leaves the session exactly as it was; fork and reset.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InfiniRuntimeError, InputError, StateError } from '../src/errors.js';
import { maxAbsDiff, open, orts, reference, rowsOf } from './helpers.js';

const ref = reference('tiny');
const rows = rowsOf(ref.ids);
const [{ ort }] = await orts();

function snapshot(/** @type {any} */ s) {
  return JSON.stringify({ st: Object.fromEntries(Object.entries(s.state).map(([k, v]) => [k, Array.from(v.data)])),
    p: s.pendingTokens, n: s.tokensConsumed, b: s.batchSize });
}

async function started() {
  const s = await open(ref.artifact, ort, 2);
  await s.stream(rows.map((r) => r.slice(0, 21)));
  return s;
}

describe('bad input', () => {
  const feeds = {
    'a token id of the vocabulary size': [[1, 2, 256], [1, 2, 3]],
    'a negative token id': [[1, -1], [1, 2]],
    'a fractional token id': [[1, 2.5], [1, 2]],
    'a string': [['a', 'b'], ['c', 'd']],
    'ragged rows': [[1, 2, 3], [1, 2]],
    'a Float32Array row': [Float32Array.of(1, 2), Float32Array.of(1, 2)],
    'the wrong batch size': [[1, 2, 3]],
    'a number': 7,
    'null': null,
    'a 3-D array': [[[1]], [[2]]],
  };
  for (const [what, ids] of Object.entries(feeds)) {
    it(`feed refuses ${what} with InputError, nothing changed`, async () => {
      const s = await started();
      const before = snapshot(s);
      await assert.rejects(s.feed(/** @type {any} */ (ids)), InputError);
      await assert.rejects(s.stream(/** @type {any} */ (ids)), InputError);
      assert.equal(snapshot(s), before);
    });
  }

  const gens = {
    'a negative maxNewTokens': { maxNewTokens: -1 },
    'no maxNewTokens': {},
    'a negative temperature': { maxNewTokens: 2, temperature: -1 },
    'an infinite temperature': { maxNewTokens: 2, temperature: Infinity },
    'topK 0': { maxNewTokens: 2, temperature: 1, topK: 0 },
    'topP 0': { maxNewTokens: 2, temperature: 1, topP: 0 },
    'topP above 1': { maxNewTokens: 2, temperature: 1, topP: 1.5 },
    'a fractional seed': { maxNewTokens: 2, temperature: 1, seed: 0.5 },
  };
  for (const [what, opts] of Object.entries(gens)) {
    it(`generate refuses ${what} with InputError, nothing changed`, async () => {
      const s = await started();
      const before = snapshot(s);
      await assert.rejects(s.generate([[1], [2]], /** @type {any} */ (opts)), InputError);
      assert.equal(snapshot(s), before);
    });
  }

  it('generate on a fresh session needs a prompt token', async () => {
    const s = await open(ref.artifact, ort, 2);
    await assert.rejects(s.generate([], { maxNewTokens: 3 }), InputError);
  });

  it('a bad batch size is refused by reset, and setState refuses a wrong tensor', async () => {
    const s = await started();
    const before = snapshot(s);
    await assert.rejects(s.reset(0), InputError);
    await assert.rejects(s.reset(1e9), InputError);
    const st = s.state;
    st['memory.0'] = { data: new Float32Array(3), dims: [2, 3] };
    await assert.rejects(s.setState(st), StateError);
    await assert.rejects(s.setState({}), StateError);
    assert.equal(snapshot(s), before);
    assert.ok(new InputError('x') instanceof InfiniRuntimeError);
  });
});

describe('fork and reset', () => {
  it('a fork continues independently; the original still matches Python', async () => {
    const s = await open(ref.artifact, ort, 2);
    const cut = 5 * ref.segment_len + 3;
    await s.feed(rows.map((r) => r.slice(0, cut)));
    const twin = s.fork();
    await twin.feed(rows.map((r) => r.slice(0, 40)));  // another continuation
    const rest = await s.feed(rows.map((r) => r.slice(cut)));
    const V = s.vocabSize; const T = rows[0].length;
    for (let b = 0; b < 2; b++) {
      const want = ref.logits.data.subarray((b * T + cut) * V, (b + 1) * T * V);
      assert.ok(maxAbsDiff(rest.data.subarray(b * (T - cut) * V, (b + 1) * (T - cut) * V), want) <= 1e-4);
    }
    assert.notEqual(twin.tokensConsumed, s.tokensConsumed);
  });

  it('reset goes back to the initial state: the same logits again, at any batch size', async () => {
    const s = await open(ref.artifact, ort, 2);
    await s.stream(rows.map((r) => r.slice(0, 50)));
    await s.reset(1);
    assert.equal(s.tokensConsumed, 0);
    assert.deepEqual(s.pendingTokens, [[]]);
    const out = await s.feed(rows[1].slice(0, 40));
    assert.deepEqual(out.dims, [40, s.vocabSize]);
    const T = rows[0].length;
    const want = ref.logits.data.subarray(T * s.vocabSize, (T + 40) * s.vocabSize);
    assert.ok(maxAbsDiff(out.data, want) <= 1e-4);
  });
});

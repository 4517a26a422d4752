// The JavaScript runtime against the Python runtime's outputs on the same artifact and token ids.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeStateFile } from '../src/state_file.js';
import { maxAbsDiff, open, orts, reference, relDiff, rowsOf } from './helpers.js';

for (const model of ['small', 'tiny']) {
  const ref = reference(model);
  for (const { name, ort } of await orts()) {
    describe(`${model} model on ${name} vs the Python runtime`, () => {
      it(`logits of every token over ${ref.segments} segments + ${ref.partial} tokens agree to 1e-4`, async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        const logits = await s.feed(ref.ids);
        assert.deepEqual(logits.dims, ref.logits.dims);
        const diff = maxAbsDiff(logits.data, ref.logits.data);
        assert.ok(diff <= 1e-4, `max abs logits diff ${diff}`);
      });

      it('state after them matches the state file the Python runtime saved', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        await s.stream(ref.ids);
        const py = decodeStateFile(s.manifest, ref.stateFile);
        assert.equal(s.tokensConsumed, ref.tokens_consumed);
        assert.equal(py.tokensConsumed, ref.tokens_consumed);
        assert.deepEqual(s.pendingTokens, py.pending);
        assert.equal(py.pending[0].length, ref.partial);
        const state = s.state;
        s.manifest.state.forEach((e, i) => {
          const rel = relDiff(state[e.name].data, py.state[i]);
          assert.ok(rel <= 1e-5, `${e.name}: relative diff ${rel}`);
        });
      });

      it('greedy generation continues with the same tokens as Python', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        await s.stream(ref.ids);
        const out = await s.generate([], { maxNewTokens: ref.greedy.dims[1] });
        assert.deepEqual(out, rowsOf(ref.greedy));
        assert.equal(s.tokensConsumed, ref.tokens_consumed + ref.greedy.dims[1]);
      });

      it('a session loaded from the Python state file continues like Python', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        await s.importState(ref.stateFile);
        const out = await s.generate([], { maxNewTokens: ref.greedy.dims[1] });
        assert.deepEqual(out, rowsOf(ref.greedy));
      });
    });
  }
}

// The JavaScript runtime against the Python runtime's outputs on the same artifact and token ids.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeStateFile } from '../src/state_file.js';
import { maxAbsDiff, open, orts, reference, relDiff, rowsOf } from './helpers.js';

for (const model of ['small', 'tiny']) {
  const ref = reference(model);
  for (const { name, ort } of await orts()) {
    describe(`${model} model on ${name} vs the Python runtime`, () => {
      it('the artifact has a decode program and the session uses it', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        assert.equal(ref.decoding, true);
        assert.equal(s.decoding, true);
      });

      for (const [mode, useDecode, want] of /** @type {const} */ ([['with the decode program', true, 'logits'],
        ['partial segments re-run padded', false, 'logitsSegment']])) {
        it(`logits of every token over ${ref.segments} segments + ${ref.partial} tokens agree to 1e-4 (${mode})`, async () => {
          const s = await open(ref.artifact, ort, ref.batch, useDecode);
          assert.equal(s.decoding, useDecode);
          const logits = await s.feed(ref.ids);
          assert.deepEqual(logits.dims, ref[want].dims);
          const diff = maxAbsDiff(logits.data, ref[want].data);
          assert.ok(diff <= 1e-4, `max abs logits diff ${diff}`);
        });
      }

      it('state after them matches the state file the Python runtime saved (version 2: with the decode state)', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        await s.stream(ref.ids);
        const py = decodeStateFile(s.manifest, ref.stateFile);
        assert.equal(py.version, 2);
        assert.equal(s.tokensConsumed, ref.tokens_consumed);
        assert.equal(py.tokensConsumed, ref.tokens_consumed);
        assert.deepEqual(s.pendingTokens, py.pending);
        assert.equal(py.pending[0].length, ref.partial);
        const mine = decodeStateFile(s.manifest, await s.exportState());
        s.decodeSpec?.state.forEach((e, i) => {
          const rel = relDiff(mine.state[i], py.state[i]);
          assert.ok(rel <= 1e-5, `${e.name}: relative diff ${rel}`);
        });
        s.decodeSpec?.cache.forEach((e, i) => {
          const rel = relDiff(/** @type {any} */ (mine.cacheRows)[i], /** @type {any} */ (py.cacheRows)[i]);
          assert.ok(rel <= 1e-5, `${e.name}: relative diff ${rel}`);
        });
        assert.ok(maxAbsDiff(/** @type {any} */ (mine.last), /** @type {any} */ (py.last)) <= 1e-4);
      });

      it('greedy generation continues with the same tokens as Python', async () => {
        const s = await open(ref.artifact, ort, ref.batch);
        await s.stream(ref.ids);
        const out = await s.generate([], { maxNewTokens: ref.greedy.dims[1] });
        assert.deepEqual(out, rowsOf(ref.greedy));
        assert.equal(s.tokensConsumed, ref.tokens_consumed + ref.greedy.dims[1]);
      });

      for (const [what, file] of /** @type {const} */ ([['version 2', 'stateFile'], ['version 1, no decode state', 'stateFileV1']])) {
        it(`a session loaded from the Python state file (${what}) continues like Python`, async () => {
          const s = await open(ref.artifact, ort, ref.batch);
          await s.importState(ref[file]);
          assert.equal(s.tokensConsumed, ref.tokens_consumed);
          const out = await s.generate([], { maxNewTokens: ref.greedy.dims[1] });
          assert.deepEqual(out, rowsOf(ref.greedy));
        });
      }
    });
  }
}

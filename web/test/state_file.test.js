// State files: read the Python runtime's, written ones read back by Python, bad files refused unchanged.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { StateError } from '../src/errors.js';
import { loadState, saveState } from '../src/node.js';
import { writeNpy } from '../src/npy.js';
import { memberData, readZipDirectory, writeZip } from '../src/zip.js';
import { GOLDENS, ROOT, maxAbsDiff, npy, open, orts, reference, rowsOf } from './helpers.js';

const [{ ort }] = await orts();
const tiny = reference('tiny');
const small = reference('small');
const PYTHON = process.env.PYTHON ?? (existsSync(join(ROOT, '.venv', 'bin', 'python')) ? join(ROOT, '.venv', 'bin', 'python') : 'python3');
const tmp = mkdtempSync(join(tmpdir(), 'infini-state-'));

/** A snapshot of everything a failed call must leave alone. */
function snapshot(/** @type {any} */ s) {
  return JSON.stringify({ st: Object.fromEntries(Object.entries(s.state).map(([k, v]) => [k, Array.from(v.data)])),
    p: s.pendingTokens, n: s.tokensConsumed, b: s.batchSize });
}

describe('state files', () => {
  it('a state file written here is read by the Python runtime, which then continues like this one', async () => {
    const s = await open(tiny.artifact, ort, 2);
    const rows = rowsOf(tiny.ids);
    await s.stream(rows.map((r) => r.slice(0, 200)));
    const path = await saveState(s, join(tmp, 'js_state.npz'));
    const next = await s.feed(rows.map((r) => r.slice(200, 230)));
    const script = [
      'import sys, json, numpy as np', `sys.path.insert(0, ${JSON.stringify(ROOT)})`, 'from runtime import InfiniSession',
      `s = InfiniSession.open(${JSON.stringify(tiny.artifact)}, batch_size=2)`, `s.load_state(${JSON.stringify(path)})`,
      `ids = np.load(${JSON.stringify(join(tiny.dir, 'ids.npy'))})[:, 200:230]`,
      'out = s.feed(ids)', `np.save(${JSON.stringify(join(tmp, 'py_next.npy'))}, out)`,
      'print(json.dumps({"consumed": s.tokens_consumed, "pending": s.pending_tokens.tolist()}))'].join('\n');
    const py = JSON.parse(execFileSync(PYTHON, ['-c', script], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n').pop());
    assert.equal(py.consumed, 230);
    assert.deepEqual(py.pending, s.pendingTokens);
    const want = npy(join(tmp, 'py_next.npy'));
    assert.deepEqual(want.dims, next.dims);
    assert.ok(maxAbsDiff(next.data, want.data) <= 1e-5);
  });

  it('save and load round-trip through a file, batch size included', async () => {
    const s = await open(tiny.artifact, ort, 2);
    await s.stream(rowsOf(tiny.ids).map((r) => r.slice(0, 37)));
    const path = await saveState(s, join(tmp, 'rt.npz'));
    const t = await open(tiny.artifact, ort, 1);
    await loadState(t, path);
    assert.equal(snapshot(t), snapshot(s));
  });

  const refusals = {
    'a compressed state file (np.savez_compressed)': () => readFileSync(join(GOLDENS, 'tiny-ref', 'state_compressed.npz')),
    "another model's state file": () => small.stateFile,
    'a truncated file': () => tiny.stateFile.subarray(0, tiny.stateFile.length - 100),
    'a member whose local header names another member': () => {
      const bytes = tiny.stateFile.slice();
      const at = Buffer.from(bytes).indexOf('state/memory.0.npy');  // first hit: the local header
      bytes[at + 6] = 'n'.charCodeAt(0);
      return bytes;
    },
    'a member whose data fails its CRC': () => {
      const bytes = tiny.stateFile.slice();
      bytes[400] ^= 0xff;
      return bytes;
    },
    'a state tensor of another shape': () => rebuilt((name, npyBytes) => (name === 'state/norm.0.npy'
      ? writeNpy('float32', [2, 2, 15], new Float32Array(60)) : npyBytes)),
    'a state holding NaN': () => rebuilt((name, npyBytes) => (name === 'state/norm.1.npy'
      ? writeNpy('float32', [2, 2, 16], new Float32Array(64).fill(NaN)) : npyBytes)),
    'a missing member': () => rebuilt((name, npyBytes) => (name === 'pending.npy' ? null : npyBytes)),
    'not a zip at all': () => new TextEncoder().encode('hello'),
  };
  for (const [what, make] of Object.entries(refusals)) {
    it(`refuses ${what} with StateError and changes nothing`, async () => {
      const s = await open(tiny.artifact, ort, 2);
      await s.stream(rowsOf(tiny.ids).map((r) => r.slice(0, 21)));
      const before = snapshot(s);
      await assert.rejects(s.importState(new Uint8Array(make())), StateError);
      assert.equal(snapshot(s), before);
    });
  }

  it('refuses a version-2 (decode) state file in a session without the decode program, and changes nothing', async () => {
    const s = await open(tiny.artifact, ort, 2, false);
    await s.stream(rowsOf(tiny.ids).map((r) => r.slice(0, 21)));
    const before = snapshot(s);
    await assert.rejects(s.importState(tiny.stateFile), StateError);
    assert.equal(snapshot(s), before);
    await s.importState(tiny.stateFileV1);  // version 1 is read by both
    assert.equal(s.tokensConsumed, tiny.tokens_consumed);
  });

  it('refuses a state file path that does not exist', async () => {
    const s = await open(tiny.artifact, ort, 2);
    await assert.rejects(loadState(s, join(tmp, 'nope.npz')), StateError);
  });
});

/**
 * The tiny reference state file with members replaced (null: dropped).
 * @param {(name: string, npy: Uint8Array) => Uint8Array | null} edit
 */
function rebuilt(edit) {
  const bytes = tiny.stateFile;
  /** @type {[string, Uint8Array][]} */
  const entries = [];
  for (const [name, m] of readZipDirectory(bytes)) {
    const out = edit(name, memberData(bytes, m));
    if (out) entries.push([name, out]);
  }
  return writeZip(entries);
}

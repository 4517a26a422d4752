// Opening artifacts: manifest checks, paths that leave the artifact, hashes, folders and URLs.
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ArtifactError, InfiniSession, ManifestError } from '../src/node.js';
import { maxAbsDiff, open, orts, reference, rowsOf } from './helpers.js';
import { serve } from './static_server.js';

const ref = reference('tiny');
const all = await orts();
const [{ ort }] = all;
const tmp = mkdtempSync(join(tmpdir(), 'infini-art-'));

/** A copy of the tiny artifact with its manifest edited. @param {(m: any) => void} edit */
function tampered(edit, name = 'art') {
  const dir = mkdtempSync(join(tmp, name));
  cpSync(ref.artifact, dir, { recursive: true });
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  edit(m);
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  return dir;
}

describe('manifest and artifact checks', () => {
  const manifests = {
    'an unsupported format version': [(/** @type {any} */ m) => { m.format_version = 2; }, ManifestError],
    'another format': [(/** @type {any} */ m) => { m.format = 'other'; }, ManifestError],
    'a missing key': [(/** @type {any} */ m) => { delete m.state; }, ManifestError],
    'an unknown I/O role': [(/** @type {any} */ m) => { m.inputs[1].role = 'cache'; }, ManifestError],
    'a state entry naming no graph input': [(/** @type {any} */ m) => { m.state[0].input = 'nope'; }, ManifestError],
    'a program key the files do not list': [(/** @type {any} */ m) => { m.program.file = 'nope'; }, ManifestError],
    'a malformed decode block': [(/** @type {any} */ m) => { m.decode = { program: { format: 'onnx', file: 'program' } }; }, ManifestError],
    'a decode state without the segment state': [(/** @type {any} */ m) => {
      m.decode.state = m.decode.state.filter((/** @type {any} */ e) => e.name !== 'memory.0');
    }, ManifestError],
    'a decode cache of another length': [(/** @type {any} */ m) => { m.decode.cache[0].shape[2] += 1; }, ManifestError],
    'a path with ..': [(/** @type {any} */ m) => { m.files.program.path = '../tiny/model.onnx'; }, ArtifactError],
    'a percent-encoded ..': [(/** @type {any} */ m) => { m.files.program.path = 'x/%2e%2E/../model.onnx'; }, ArtifactError],
    'an absolute path': [(/** @type {any} */ m) => { m.files.program.path = '/etc/passwd'; }, ArtifactError],
    'a URL of another origin': [(/** @type {any} */ m) => { m.files.program.path = 'http://example.com/model.onnx'; }, ArtifactError],
    'a protocol-relative URL': [(/** @type {any} */ m) => { m.files.program.path = '//example.com/model.onnx'; }, ArtifactError],
    'a Windows drive path': [(/** @type {any} */ m) => { m.files.program.path = 'C:\\model.onnx'; }, ArtifactError],
    'a wrong sha256': [(/** @type {any} */ m) => { m.files.program.sha256 = '0'.repeat(64); }, ArtifactError],
    'a wrong size': [(/** @type {any} */ m) => { m.files.program.bytes += 1; }, ArtifactError],
    'graph I/O names the graph does not have': [(/** @type {any} */ m) => {
      m.inputs[1].name = 'past_x'; m.state[0].input = 'past_x';
    }, ArtifactError],
  };
  for (const [what, [edit, Err]] of Object.entries(manifests)) {
    it(`refuses ${what} (${/** @type {any} */ (Err).name})`, async () => {
      await assert.rejects(open(tampered(/** @type {any} */ (edit)), ort), /** @type {any} */ (Err));
    });
  }

  it('refuses a folder without manifest.json (ManifestError) and a missing folder (ArtifactError)', async () => {
    const dir = mkdtempSync(join(tmp, 'empty'));
    await assert.rejects(open(dir, ort), ManifestError);
    await assert.rejects(open(join(tmp, 'does-not-exist'), ort), ArtifactError);
  });

  it('refuses a model file that was replaced (sha256)', async () => {
    const dir = tampered(() => {});
    const bytes = readFileSync(join(dir, 'model.onnx'));
    bytes[bytes.length - 10] ^= 1;
    writeFileSync(join(dir, 'model.onnx'), bytes);
    await assert.rejects(open(dir, ort), ArtifactError);
  });

  it('refuses a symbolic link that leads out of the artifact folder', async () => {
    const dir = tampered((m) => { m.files.program.path = 'link.onnx'; });
    symlinkSync(join(ref.artifact, 'model.onnx'), join(dir, 'link.onnx'));
    await assert.rejects(open(dir, ort), ArtifactError);
  });
});

describe('two artifacts opened at once', () => {
  it('create their onnxruntime sessions one at a time (onnxruntime-web holds external data by path while it creates one)', async () => {
    const web = /** @type {any} */ (all.find((o) => o.name.startsWith('onnxruntime-web'))).ort;
    let inFlight = 0; let most = 0; let made = 0;
    const counting = { ...web, InferenceSession: { create: async (/** @type {any[]} */ ...args) => {
      inFlight++; made++; most = Math.max(most, inFlight);
      try { return await web.InferenceSession.create(...args); } finally { inFlight--; }
    } } };
    const [a, b] = await Promise.all([open(ref.artifact, counting, 2), open(ref.artifact, counting, 2, false)]);
    assert.equal(made, (a.decoding ? 2 : 1) + (b.decoding ? 2 : 1));
    assert.equal(most, 1, 'two sessions were being created at once');
    const rows = rowsOf(ref.ids).map((r) => r.slice(0, 100));
    const [x, y] = [await a.feed(rows), await b.feed(rows)];
    assert.ok(maxAbsDiff(x.data, y.data) <= 1e-4);
  });
});

describe('artifacts over HTTP', () => {
  /** @type {{url: string, close: () => Promise<void>}} */
  let server;
  before(async () => {
    cpSync(ref.artifact, join(tmp, 'tiny'), { recursive: true });
    server = await serve(tmp);
  });
  after(async () => { await server?.close(); rmSync(tmp, { recursive: true, force: true }); });

  for (const { name, ort: pkg } of all) {
    it(`opens an artifact URL on ${name} and matches Python`, async () => {
      const s = await InfiniSession.open(`${server.url}tiny/`, { ort: pkg, batchSize: 2 });
      assert.equal(s.artifact.verified, true);
      const rows = rowsOf(ref.ids).map((r) => r.slice(0, 100));
      const out = await s.feed(rows);
      const V = s.vocabSize; const T = ref.ids.dims[1];
      for (let b = 0; b < 2; b++) {
        assert.ok(maxAbsDiff(out.data.subarray(b * 100 * V, (b + 1) * 100 * V), ref.logits.data.subarray(b * T * V, (b * T + 100) * V)) <= 1e-4);
      }
    });
  }

  it('refuses a manifest path that leaves the URL base, and a missing manifest', async () => {
    const dir = tampered((m) => { m.files.program.path = 'a/%2e%2e/%2e%2e/tiny/model.onnx'; }, 'web');
    const base = `${server.url}${dir.slice(tmp.length + 1)}/`;
    await assert.rejects(InfiniSession.open(base, { ort }), ArtifactError);
    await assert.rejects(InfiniSession.open(`${server.url}nowhere/`, { ort }), ManifestError);
  });
});

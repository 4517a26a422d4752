// Shared by the tests: the Python runtime's goldens, both onnxruntime packages, small array helpers.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readNpyData, readNpyHeader } from '../src/npy.js';
import { openArtifact } from '../src/node.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const GOLDENS = resolve(process.env.INFINI_GOLDENS ?? join(ROOT, 'out', 'web-goldens'));

/** The goldens index written by web/tools/make_goldens.py (the Python runtime's outputs). */
export function goldens() {
  const path = join(GOLDENS, 'index.json');
  if (!existsSync(path)) {
    throw new Error(`no goldens at ${GOLDENS}: run \`python web/tools/make_goldens.py --out ${GOLDENS}\` (make test does)`);
  }
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** @param {string} model small | tiny */
export function reference(model) {
  const index = goldens();
  const info = index.models[model];
  const dir = join(GOLDENS, `${model}-ref`);
  return { ...info, dir, artifact: info.artifact, ids: npy(join(dir, 'ids.npy')), logits: npy(join(dir, 'logits.npy')),
    logitsSegment: npy(join(dir, 'logits_segment.npy')),
    greedy: npy(join(dir, 'greedy.npy')), sampleProbs: npy(join(dir, 'sample_probs.npy')),
    stateFile: new Uint8Array(readFileSync(join(dir, 'state.npz'))),
    stateFileV1: new Uint8Array(readFileSync(join(dir, 'state_v1.npz'))) };
}

/** @param {string} path */
export function npy(path) {
  const bytes = new Uint8Array(readFileSync(path));
  const h = readNpyHeader(bytes);
  return { dims: h.shape, data: readNpyData(bytes, h) };
}

/** B rows of numbers from an int64 (B, T) array. */
export function rowsOf(/** @type {{dims: number[], data: any}} */ t) {
  const [B, T] = t.dims;
  return Array.from({ length: B }, (_, b) => Array.from(t.data.subarray(b * T, (b + 1) * T), Number));
}

/** Max |a - b| over two float arrays of one length. */
export function maxAbsDiff(/** @type {ArrayLike<number>} */ a, /** @type {ArrayLike<number>} */ b) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** max |a - b| / max |b| */
export function relDiff(/** @type {ArrayLike<number>} */ a, /** @type {ArrayLike<number>} */ b) {
  let s = 0;
  for (let i = 0; i < b.length; i++) s = Math.max(s, Math.abs(b[i]));
  return maxAbsDiff(a, b) / Math.max(s, 1e-30);
}

let ortNode; let ortWeb;
/** Both onnxruntime packages, the same session code on each. */
export async function orts() {
  ortNode ??= await import('onnxruntime-node');
  if (!ortWeb) {
    ortWeb = await import('onnxruntime-web');
    ortWeb.env.wasm.numThreads = 1;
  }
  return [{ name: 'onnxruntime-node', ort: ortNode }, { name: 'onnxruntime-web (wasm)', ort: ortWeb }];
}

/** @param {string} artifact @param {any} ort @param {number} [batchSize] @param {boolean} [useDecode] */
export function open(artifact, ort, batchSize = 1, useDecode = true) {
  return openArtifact(artifact, { ort, batchSize, useDecode });
}

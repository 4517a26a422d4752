// State files compatible with the Python runtime's save_state / load_state (an uncompressed .npz).
import { StateError } from './errors.js';
import { concreteShape } from './manifest.js';
import { readNpyData, readNpyHeader, writeNpy } from './npy.js';
import { memberData, readZipDirectory, writeZip } from './zip.js';

export const STATE_FILE_FORMAT = 'infini-export-state';
export const STATE_FILE_VERSION = 1;
const MAX_META_BYTES = 1 << 20;

/**
 * @typedef {object} StateSnapshot
 * @property {Float32Array[]} state     one per manifest state entry, shape [batch, ...]
 * @property {number[][]} pending       per batch row, the tokens of the incomplete segment
 * @property {number} batchSize
 * @property {number} tokensConsumed
 */

/**
 * The bytes of a state file (what ``InfiniSession.save_state`` writes in Python).
 * @param {import('./manifest.js').Manifest} manifest
 * @param {StateSnapshot} snap
 * @returns {Uint8Array}
 */
export function encodeStateFile(manifest, snap) {
  const meta = { format: STATE_FILE_FORMAT, version: STATE_FILE_VERSION, model_fingerprint: manifest.fingerprint,
    tokens_consumed: snap.tokensConsumed, batch_size: snap.batchSize, segment_len: manifest.segmentLen,
    names: manifest.state.map((e) => e.name) };
  /** @type {[string, Uint8Array][]} */
  const entries = manifest.state.map((e, i) => [`state/${e.name}.npy`,
    writeNpy('float32', concreteShape(e.shape, snap.batchSize), snap.state[i])]);
  const p = snap.pending[0]?.length ?? 0;
  const pending = new BigInt64Array(snap.batchSize * p);
  snap.pending.forEach((row, b) => row.forEach((t, j) => { pending[b * p + j] = BigInt(t); }));
  entries.push(['pending.npy', writeNpy('int64', [snap.batchSize, p], pending)]);
  const metaBytes = new TextEncoder().encode(JSON.stringify(meta));
  entries.push(['meta.npy', writeNpy('uint8', [metaBytes.length], metaBytes)]);
  return writeZip(entries);
}

/**
 * Read a state file written by this runtime or the Python one, for ``manifest``'s model. Every member's
 * header (zip and .npy: name, compression, dtype, shape) is checked before any array data is read;
 * anything that does not belong to this model throws StateError.
 * @param {import('./manifest.js').Manifest} manifest
 * @param {Uint8Array} bytes
 * @param {string} [where] for messages
 * @returns {StateSnapshot}
 */
export function decodeStateFile(manifest, bytes, where = 'state file') {
  try {
    return decode(manifest, bytes, where);
  } catch (err) {
    if (err instanceof StateError) throw err;
    throw new StateError(`${where} is not a readable state file: ${/** @type {Error} */ (err).message}`, { cause: err });
  }
}

/** @param {import('./manifest.js').Manifest} manifest @param {Uint8Array} bytes @param {string} where */
function decode(manifest, bytes, where) {
  const members = readZipDirectory(bytes);
  const entries = manifest.state;
  const expected = new Set([...entries.map((e) => `state/${e.name}.npy`), 'pending.npy', 'meta.npy']);
  const got = [...members.keys()];
  const names = (/** @type {Iterable<string>} */ list) => JSON.stringify([...list].sort());
  if (got.length !== expected.size || got.some((n) => !expected.has(n))) {
    throw new StateError(`${where} has members ${names(got)}, this model expects ${names(expected)}`);
  }
  const metaMember = /** @type {import('./zip.js').ZipMember} */ (members.get('meta.npy'));
  if (metaMember.size > MAX_META_BYTES) throw new StateError(`${where}: meta.npy is ${metaMember.size} bytes, too large`);
  const metaNpy = memberData(bytes, metaMember);
  const metaHeader = readNpyHeader(metaNpy);
  if (metaHeader.dtype !== 'uint8' || metaHeader.shape.length !== 1) throw new StateError(`${where}: meta.npy is not a uint8 vector`);
  let meta;
  try { meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(readNpyData(metaNpy, metaHeader))); } catch (err) {
    throw new StateError(`${where}: meta.npy is not JSON`, { cause: err });
  }
  if (meta?.format !== STATE_FILE_FORMAT || meta?.version !== STATE_FILE_VERSION) {
    throw new StateError(`${where} is not an infini-export state file of version ${STATE_FILE_VERSION}`);
  }
  if (meta.model_fingerprint !== manifest.fingerprint) {
    throw new StateError(`${where} holds the state of another model (fingerprint ${String(meta.model_fingerprint).slice(0, 12)}...), ` +
      `this session's model is ${manifest.fingerprint.slice(0, 12)}...`);
  }
  // headers first: every member's dtype and shape, before any array data
  const zipped = (/** @type {string} */ name) => /** @type {import('./zip.js').ZipMember} */ (members.get(name));
  const headerOf = (/** @type {string} */ name) => {
    const m = zipped(name);
    return readNpyHeader(bytes.subarray(m.offset, m.offset + m.size));
  };
  const first = headerOf(`state/${entries[0].name}.npy`);
  const batch = first.shape.length ? first.shape[0] : 0;
  if (!(batch >= 1 && batch <= manifest.maxBatch)) {
    throw new StateError(`${where}: batch size must be an integer in [1, ${manifest.maxBatch}], got ${batch}`);
  }
  for (const e of entries) {
    const h = headerOf(`state/${e.name}.npy`);
    const want = concreteShape(e.shape, batch);
    if (h.dtype !== 'float32' || JSON.stringify(h.shape) !== JSON.stringify(want)) {
      throw new StateError(`${where}: state tensor ${JSON.stringify(e.name)} is ${h.dtype} (${h.shape}), expected float32 (${want})`);
    }
  }
  const ph = headerOf('pending.npy');
  if (ph.dtype !== 'int64' || ph.shape.length !== 2 || ph.shape[0] !== batch || ph.shape[1] >= manifest.segmentLen) {
    throw new StateError(`${where}: pending tokens are ${ph.dtype} (${ph.shape}), expected int64 (${batch}, p) with p < ${manifest.segmentLen}`);
  }
  // data
  const state = entries.map((e) => {
    const m = zipped(`state/${e.name}.npy`);
    const npy = memberData(bytes, m);
    const arr = /** @type {Float32Array} */ (readNpyData(npy, readNpyHeader(npy)));
    if (!arr.every(Number.isFinite)) throw new StateError(`${where}: state tensor ${JSON.stringify(e.name)} holds NaN or inf; refusing a corrupt state`);
    return arr;
  });
  const pnpy = memberData(bytes, zipped('pending.npy'));
  const pdata = /** @type {BigInt64Array} */ (readNpyData(pnpy, ph));
  const p = ph.shape[1]; const V = BigInt(manifest.vocabSize);
  const pending = [];
  for (let b = 0; b < batch; b++) {
    const row = [];
    for (let j = 0; j < p; j++) {
      const t = pdata[b * p + j];
      if (t < 0n || t >= V) throw new StateError(`${where}: pending token ${t} lies outside [0, ${V})`);
      row.push(Number(t));
    }
    pending.push(row);
  }
  const consumed = meta.tokens_consumed ?? p;
  if (!Number.isSafeInteger(consumed) || consumed < p) throw new StateError(`${where}: tokens_consumed ${JSON.stringify(consumed)} is not an integer >= ${p}`);
  return { state, pending, batchSize: batch, tokensConsumed: consumed };
}

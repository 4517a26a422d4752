// State files compatible with the Python runtime's save_state / load_state (an uncompressed .npz).
import { StateError } from './errors.js';
import { concreteShape } from './manifest.js';
import { readNpyData, readNpyHeader, writeNpy } from './npy.js';
import { memberData, readZipDirectory, writeZip } from './zip.js';

export const STATE_FILE_FORMAT = 'infini-export-state';
export const STATE_FILE_VERSION = 2;  // 2: the decode state (pending write, cache rows); 1: segment state + pending tokens
const MAX_META_BYTES = 1 << 20;

/**
 * @typedef {object} StateSnapshot
 * @property {Float32Array[]} state     version 1: one per manifest state entry; version 2: one per decode state entry
 * @property {number[][]} pending       per batch row, the tokens of the incomplete segment
 * @property {number} batchSize
 * @property {number} tokensConsumed
 * @property {1 | 2} [version]
 * @property {Float32Array[]} [cacheRows]   version 2: per cache entry, the rows of the pending tokens (B, H, p, dh)
 * @property {Float32Array | null} [last]   version 2: logits of the last token consumed (B, V), if any
 */

/**
 * The bytes of a state file (what ``InfiniSession.save_state`` writes in Python).
 * @param {import('./manifest.js').Manifest} manifest
 * @param {StateSnapshot} snap
 * @returns {Uint8Array}
 */
export function encodeStateFile(manifest, snap) {
  const dec = snap.version === 2 ? manifest.decode : null;
  const p = snap.pending[0]?.length ?? 0;
  const entriesOf = dec ? dec.state : manifest.state;
  /** @type {Record<string, unknown>} */
  const meta = { format: STATE_FILE_FORMAT, version: dec ? 2 : 1, model_fingerprint: manifest.fingerprint,
    tokens_consumed: snap.tokensConsumed, batch_size: snap.batchSize, segment_len: manifest.segmentLen,
    names: entriesOf.map((e) => e.name) };
  if (dec) meta.position = p;
  /** @type {[string, Uint8Array][]} */
  const entries = entriesOf.map((e, i) => [`state/${e.name}.npy`,
    writeNpy('float32', concreteShape(e.shape, snap.batchSize), snap.state[i])]);
  if (dec) {
    dec.cache.forEach((e, i) => {
      const [B, H, , dh] = concreteShape(e.shape, snap.batchSize);
      entries.push([`cache/${e.name}.npy`, writeNpy('float32', [B, H, p, dh], /** @type {Float32Array[]} */ (snap.cacheRows)[i])]);
    });
    // always present (zeros when there is none yet), as the Python runtime writes it; has_last_logits says which
    meta.has_last_logits = Boolean(snap.last);
    entries.push(['last_logits.npy', writeNpy('float32', [snap.batchSize, manifest.vocabSize],
      snap.last ?? new Float32Array(snap.batchSize * manifest.vocabSize))]);
  }
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
  const metaMember = members.get('meta.npy');
  if (!metaMember) throw new StateError(`${where} has no meta.npy: not an infini-export state file`);
  if (metaMember.size > MAX_META_BYTES) throw new StateError(`${where}: meta.npy is ${metaMember.size} bytes, too large`);
  const metaNpy = memberData(bytes, metaMember);
  const metaHeader = readNpyHeader(metaNpy);
  if (metaHeader.dtype !== 'uint8' || metaHeader.shape.length !== 1) throw new StateError(`${where}: meta.npy is not a uint8 vector`);
  let meta;
  try { meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(readNpyData(metaNpy, metaHeader))); } catch (err) {
    throw new StateError(`${where}: meta.npy is not JSON`, { cause: err });
  }
  const version = meta?.version;
  if (meta?.format !== STATE_FILE_FORMAT || (version !== 1 && version !== 2)) {
    throw new StateError(`${where} is not an infini-export state file of version 1 or ${STATE_FILE_VERSION}`);
  }
  if (meta.model_fingerprint !== manifest.fingerprint) {
    throw new StateError(`${where} holds the state of another model (fingerprint ${String(meta.model_fingerprint).slice(0, 12)}...), ` +
      `this session's model is ${manifest.fingerprint.slice(0, 12)}...`);
  }
  const dec = version === 2 ? manifest.decode : null;
  if (version === 2 && !dec) throw new StateError(`${where} holds a decode state (version 2); this model has no decode program`);
  const entries = dec ? dec.state : manifest.state;
  const expected = new Set([...entries.map((e) => `state/${e.name}.npy`), 'pending.npy', 'meta.npy',
    ...(dec ? dec.cache.map((e) => `cache/${e.name}.npy`) : [])]);
  const optional = dec ? ['last_logits.npy'] : [];
  const got = [...members.keys()];
  const names = (/** @type {Iterable<string>} */ list) => JSON.stringify([...list].sort());
  if (got.some((n) => !expected.has(n) && !optional.includes(n)) || [...expected].some((n) => !members.has(n))) {
    throw new StateError(`${where} has members ${names(got)}, this model expects ${names(expected)}`);
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
  const p0 = ph.shape[1];
  if (dec) {
    for (const e of dec.cache) {
      const h = headerOf(`cache/${e.name}.npy`);
      const [B, H, , dh] = concreteShape(e.shape, batch);
      if (h.dtype !== 'float32' || JSON.stringify(h.shape) !== JSON.stringify([B, H, p0, dh])) {
        throw new StateError(`${where}: cache tensor ${JSON.stringify(e.name)} is ${h.dtype} (${h.shape}), expected float32 (${[B, H, p0, dh]}): the rows of the ${p0} pending tokens`);
      }
    }
    if (members.has('last_logits.npy')) {
      const h = headerOf('last_logits.npy');
      if (h.dtype !== 'float32' || JSON.stringify(h.shape) !== JSON.stringify([batch, manifest.vocabSize])) {
        throw new StateError(`${where}: last_logits is ${h.dtype} (${h.shape}), expected float32 (${[batch, manifest.vocabSize]})`);
      }
    }
  }
  // data
  const floats = (/** @type {string} */ name, /** @type {string} */ what) => {
    const npy = memberData(bytes, zipped(name));
    const arr = /** @type {Float32Array} */ (readNpyData(npy, readNpyHeader(npy)));
    if (!arr.every(Number.isFinite)) throw new StateError(`${where}: ${what} holds NaN or inf; refusing a corrupt state`);
    return arr;
  };
  const state = entries.map((e) => floats(`state/${e.name}.npy`, `state tensor ${JSON.stringify(e.name)}`));
  const cacheRows = dec ? dec.cache.map((e) => floats(`cache/${e.name}.npy`, `cache tensor ${JSON.stringify(e.name)}`)) : undefined;
  const last = dec && members.has('last_logits.npy') && meta.has_last_logits !== false
    ? floats('last_logits.npy', 'last_logits') : null;
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
  return { state, pending, batchSize: batch, tokensConsumed: consumed, version, cacheRows, last };
}

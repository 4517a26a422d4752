// The optional token-level decode program of a manifest (``manifest.decode``): parsed and checked here.
import { ManifestError } from './errors.js';

export const DECODE_INPUT_ROLES = ['ids', 'position', 'state-in', 'cache-in'];
export const DECODE_OUTPUT_ROLES = ['logits', 'state-out', 'cache-rows', 'cache-out'];

/**
 * @typedef {object} DecodeSpec
 * @property {string} file           files key of the decode program
 * @property {number} maxTokens      tokens per segment the cache holds (N)
 * @property {any[]} inputs
 * @property {any[]} outputs
 * @property {{name: string, input: string, output: string, shape: (string|number)[], dtype: string}[]} state
 * @property {{name: string, input: string, output: string, shape: (string|number)[], axis: number, dtype: string}[]} cache
 * @property {string} position       name of the position input (int64, shape [1])
 * @property {string} ids            name of the ids input
 * @property {string} logits         name of the logits output
 * @property {boolean} cacheOut      the cache outputs are the whole caches (role cache-out), not the chunk's rows
 */

/**
 * Check a ``decode`` block (additive: a manifest without one is read as before).
 * @param {any} d
 * @param {{file(key: string): unknown, segmentLen: number, state?: {name: string}[]}} manifest
 * @returns {DecodeSpec}
 */
export function parseDecodeSpec(d, manifest) {
  const bad = (/** @type {string} */ why) => new ManifestError(`manifest decode block: ${why}`);
  if (typeof d !== 'object' || Array.isArray(d)) throw bad('must be an object');
  if (typeof d.program !== 'object' || d.program === null || d.program.format !== 'onnx' || typeof d.program.file !== 'string') {
    throw bad('program must be {format: "onnx", file: <files key>}');
  }
  manifest.file(d.program.file);
  if (d.max_tokens !== manifest.segmentLen) {
    throw bad(`max_tokens must equal segment_len=${manifest.segmentLen}, got ${JSON.stringify(d.max_tokens)}`);
  }
  for (const key of ['inputs', 'outputs', 'state', 'cache']) {
    if (!Array.isArray(d[key]) || d[key].some((/** @type {any} */ e) => typeof e !== 'object' || e === null || typeof e.name !== 'string')) {
      throw bad(`${key} must be a list of objects with a name`);
    }
  }
  const inRoles = d.inputs.map((/** @type {any} */ io) => io.role);
  const outRoles = d.outputs.map((/** @type {any} */ io) => io.role);
  if (inRoles.some((/** @type {string} */ r) => !DECODE_INPUT_ROLES.includes(r)) ||
      outRoles.some((/** @type {string} */ r) => !DECODE_OUTPUT_ROLES.includes(r))) {
    throw bad(`roles ${JSON.stringify([...inRoles, ...outRoles])} include one outside ${JSON.stringify([...DECODE_INPUT_ROLES, ...DECODE_OUTPUT_ROLES])}`);
  }
  const one = (/** @type {any[]} */ list, /** @type {string} */ role) => {
    const hits = list.filter((io) => io.role === role);
    if (hits.length !== 1) throw bad(`must list exactly one ${role}, found ${hits.length}`);
    return hits[0].name;
  };
  const ids = one(d.inputs, 'ids'); const logits = one(d.outputs, 'logits'); const position = one(d.inputs, 'position');
  if (d.position !== position) throw bad(`position ${JSON.stringify(d.position)} is not the input of role position (${position})`);
  const ins = new Map(d.inputs.map((/** @type {any} */ io) => [io.name, io.role]));
  const outs = new Map(d.outputs.map((/** @type {any} */ io) => [io.name, io.role]));
  for (const s of d.state) {
    if (ins.get(s.input) !== 'state-in' || outs.get(s.output) !== 'state-out') {
      throw bad(`state ${JSON.stringify(s.name)} maps ${s.output} -> ${s.input}, which are not a state-out and a state-in`);
    }
    intShape(s.shape, `state ${s.name}`, bad);
  }
  // every cache output is the chunk's rows (cache-rows) or every one the whole cache (cache-out)
  const cacheRole = d.cache.length && outs.get(d.cache[0].output) === 'cache-out' ? 'cache-out' : 'cache-rows';
  for (const c of d.cache) {
    if (ins.get(c.input) !== 'cache-in' || outs.get(c.output) !== cacheRole) {
      throw bad(`cache ${JSON.stringify(c.name)} maps ${c.output} -> ${c.input}, which are not ${cacheRole} and a cache-in`);
    }
    intShape(c.shape, `cache ${c.name}`, bad);
    if (c.shape.length !== 4 || c.axis !== 2 || c.shape[2] !== d.max_tokens) {
      throw bad(`cache ${JSON.stringify(c.name)} must have shape ["batch", H, max_tokens, dh] and axis 2`);
    }
  }
  const names = new Set(d.state.map((/** @type {any} */ s) => s.name));
  const missing = /** @type {any[]} */ (manifest.state ?? []).map((s) => s.name).filter((n) => !names.has(n));
  if (missing.length) throw bad(`its state lacks the segment state tensors ${JSON.stringify(missing)}`);
  const counts = (/** @type {string[]} */ roles, /** @type {string} */ r) => roles.filter((x) => x === r).length;
  if (counts(inRoles, 'state-in') !== d.state.length || counts(outRoles, 'state-out') !== d.state.length ||
      counts(inRoles, 'cache-in') !== d.cache.length || counts(outRoles, cacheRole) !== d.cache.length) {
    throw bad(`every state-in/state-out and cache-in/${cacheRole} must belong to one state or cache entry`);
  }
  return { file: d.program.file, maxTokens: d.max_tokens, inputs: d.inputs, outputs: d.outputs, state: d.state,
    cache: d.cache, position, ids, logits, cacheOut: cacheRole === 'cache-out' };
}

/** @param {any} shape @param {string} what @param {(why: string) => Error} bad */
function intShape(shape, what, bad) {
  if (!Array.isArray(shape) || shape[0] !== 'batch' || shape.slice(1).some((dim) => !(Number.isInteger(dim) && dim >= 1))) {
    throw bad(`${what} has shape ${JSON.stringify(shape)}; expected ["batch", positive integers...]`);
  }
}

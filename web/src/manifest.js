// manifest.json: the contract between an exporter and the runtime (mirrors runtime/manifest.py).
import { ManifestError } from './errors.js';
import { checkRelativePath } from './paths.js';
import { parseDecodeSpec } from './decode_spec.js';
import { parseGeneration, parseTokenizerSpec } from './tokenizer.js';

export const FORMAT = 'infini-export';
export const FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';
export const ROLES = ['ids', 'state-in', 'logits', 'state-out'];
const REQUIRED = ['format', 'format_version', 'backend', 'segment_len', 'vocab_size', 'inputs', 'outputs', 'state',
  'files', 'program', 'model_fingerprint'];
const SHA256 = /^[0-9a-f]{64}$/;

/**
 * @typedef {object} StateEntry
 * @property {string} name    base name, e.g. "memory.0"
 * @property {string} input   graph input, e.g. "past_memory.0"
 * @property {string} output  graph output, e.g. "present_memory.0"
 * @property {(string|number)[]} shape  ["batch", d1, ...]
 * @property {string} dtype
 */

/**
 * @typedef {object} FileEntry
 * @property {string} path    relative to the artifact folder (checked)
 * @property {string} sha256  lowercase hex
 * @property {number} [bytes]
 */

/** A parsed, checked manifest; ``data`` keeps the whole JSON document. */
export class Manifest {
  /** @param {any} data a checked document (use {@link Manifest.fromObject}) */
  constructor(data) {
    /** @type {any} */
    this.data = data;
  }

  /**
   * Parse and check a manifest document; throws ManifestError (ArtifactError for a path leaving the artifact).
   * @param {unknown} data
   * @returns {Manifest}
   */
  static fromObject(data) {
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      throw new ManifestError(`manifest must be a JSON object, got ${data === null ? 'null' : Array.isArray(data) ? 'array' : typeof data}`);
    }
    const d = /** @type {any} */ (data);
    const missing = REQUIRED.filter((k) => !(k in d));
    if (missing.length) {
      throw new ManifestError(`manifest lacks the keys ${JSON.stringify(missing)}; expected all of ${JSON.stringify(REQUIRED)}`);
    }
    if (d.format !== FORMAT) throw new ManifestError(`manifest format is ${JSON.stringify(d.format)}, expected ${JSON.stringify(FORMAT)}`);
    const v = d.format_version;
    if (!Number.isInteger(v) || v < 1 || v > FORMAT_VERSION) {
      throw new ManifestError(`manifest format_version ${JSON.stringify(v)} is not supported: this runtime reads ` +
        `versions 1..${FORMAT_VERSION}; upgrade infini-export-web to open it`);
    }
    const man = new Manifest(d);
    man._check();
    return man;
  }

  /**
   * Parse manifest.json text.
   * @param {string} text
   * @param {string} [where] for messages
   */
  static parse(text, where = MANIFEST_FILE) {
    let data;
    try { data = JSON.parse(text); } catch (err) {
      throw new ManifestError(`${where} is not readable JSON: ${/** @type {Error} */ (err).message}`, { cause: err });
    }
    return Manifest.fromObject(data);
  }

  /** @returns {number} */ get segmentLen() { return this.data.segment_len; }
  /** @returns {number} */ get vocabSize() { return this.data.vocab_size; }
  /** @returns {number} */ get maxBatch() { return this.data.batch?.max ?? 2 ** 30; }
  /** Identifies the model (weights + config), the same for every backend it was exported to. @returns {string} */
  get fingerprint() { return this.data.model_fingerprint; }
  /** @returns {StateEntry[]} */ get state() { return this.data.state; }
  /** @returns {string[]} */ get inputNames() { return this.data.inputs.map((/** @type {any} */ io) => io.name); }
  /** @returns {string[]} */ get outputNames() { return this.data.outputs.map((/** @type {any} */ io) => io.name); }
  /** Name of the ids input. @returns {string} */
  get idsName() { return this.data.inputs.find((/** @type {any} */ io) => io.role === 'ids').name; }
  /** Name of the logits output. @returns {string} */
  get logitsName() { return this.data.outputs.find((/** @type {any} */ io) => io.role === 'logits').name; }

  /**
   * The entry of a files key (its path already checked to stay inside the artifact).
   * @param {string} key
   * @returns {FileEntry}
   */
  file(key) {
    const entry = Object.hasOwn(this.data.files, key) ? this.data.files[key] : undefined;
    if (!entry) throw new ManifestError(`manifest names the file key ${JSON.stringify(key)}, which its files do not list`);
    return entry;
  }

  /** The token-level decode program, when the manifest has one (else null). */
  get decode() {
    return this.data.decode === undefined || this.data.decode === null ? null : parseDecodeSpec(this.data.decode, this);
  }

  /** The tokenizer section (tokenizer.json's files key, bos, eos, add_bos), when the manifest has one (else null). */
  get tokenizer() {
    return this.data.tokenizer === undefined || this.data.tokenizer === null ? null : parseTokenizerSpec(this.data.tokenizer, this);
  }

  /** Generation defaults: the generation section, or this runtime's defaults where it has none. */
  get generation() { return parseGeneration(this.data.generation); }

  _check() {
    /** @type {any} */
    const d = this.data;
    for (const key of ['inputs', 'outputs', 'state']) {
      if (!Array.isArray(d[key]) || d[key].some((/** @type {any} */ e) => typeof e !== 'object' || e === null || typeof e.name !== 'string')) {
        throw new ManifestError(`manifest ${key} must be a list of objects with a name`);
      }
    }
    const roles = [...d.inputs, ...d.outputs].map((/** @type {any} */ io) => io.role);
    if (roles.some((r) => !ROLES.includes(r))) {
      throw new ManifestError(`manifest I/O roles ${JSON.stringify(roles)} include one outside ${JSON.stringify(ROLES)}`);
    }
    const ins = new Set(this.inputNames); const outs = new Set(this.outputNames);
    for (const s of d.state) {
      if (!ins.has(s.input) || !outs.has(s.output)) {
        throw new ManifestError(`state ${JSON.stringify(s.name)} maps ${JSON.stringify(s.output)} -> ${JSON.stringify(s.input)}, ` +
          "but the manifest's graph I/O does not list both");
      }
      checkShape(s.shape, `state ${s.name}`);
      if (s.dtype !== 'float32') throw new ManifestError(`state ${JSON.stringify(s.name)} has dtype ${s.dtype}; this runtime carries float32 state`);
    }
    if (d.inputs.filter((/** @type {any} */ io) => io.role === 'ids').length !== 1 || d.outputs.filter((/** @type {any} */ io) => io.role === 'logits').length !== 1) {
      throw new ManifestError('manifest must list exactly one ids input and one logits output');
    }
    const stateIn = d.inputs.filter((/** @type {any} */ io) => io.role === 'state-in').length;
    const stateOut = d.outputs.filter((/** @type {any} */ io) => io.role === 'state-out').length;
    if (stateIn !== d.state.length || stateOut !== d.state.length) {
      throw new ManifestError(`manifest lists ${stateIn} state inputs and ${stateOut} state outputs for ${d.state.length} state entries`);
    }
    const logits = d.outputs.find((/** @type {any} */ io) => io.role === 'logits');
    if (logits.dtype !== undefined && logits.dtype !== 'float32') {
      throw new ManifestError(`manifest logits dtype is ${logits.dtype}; this runtime reads float32 logits`);
    }
    if (!Number.isInteger(d.segment_len) || !Number.isInteger(d.vocab_size) || d.segment_len < 1 || d.vocab_size < 1) {
      throw new ManifestError(`manifest segment_len=${d.segment_len}, vocab_size=${d.vocab_size}: expected integers >= 1`);
    }
    if (typeof d.files !== 'object' || d.files === null || Array.isArray(d.files)) throw new ManifestError('manifest files must be an object');
    for (const [key, entry] of Object.entries(d.files)) {
      if (typeof entry !== 'object' || entry === null) throw new ManifestError(`manifest file ${JSON.stringify(key)} is not an object`);
      checkRelativePath(entry.path, `file ${JSON.stringify(key)}`);
      if (typeof entry.sha256 !== 'string' || !SHA256.test(entry.sha256)) {
        throw new ManifestError(`manifest file ${JSON.stringify(key)} has no sha256 (64 lowercase hex digits)`);
      }
      if (entry.bytes !== undefined && !(Number.isInteger(entry.bytes) && entry.bytes >= 0)) {
        throw new ManifestError(`manifest file ${JSON.stringify(key)} has bytes=${JSON.stringify(entry.bytes)}`);
      }
    }
    if (typeof d.program !== 'object' || d.program === null || typeof d.program.file !== 'string') {
      throw new ManifestError('manifest program must name a files key');
    }
    this.file(d.program.file);
    const init = d.initial_state ?? 'zeros';
    if (init !== 'zeros') {
      if (typeof init !== 'object' || typeof init.file !== 'string') {
        throw new ManifestError(`manifest initial_state must be "zeros" or {file: key}, got ${JSON.stringify(init)}`);
      }
      this.file(init.file);
    }
    const batch = d.batch;
    if (batch !== undefined && (typeof batch !== 'object' || !Number.isInteger(batch.max) || batch.max < 1)) {
      throw new ManifestError(`manifest batch ${JSON.stringify(batch)} has no integer max >= 1`);
    }
    if (d.decode !== undefined && d.decode !== null) parseDecodeSpec(d.decode, this);
    void this.tokenizer; void this.generation;  // checked here: a bad section fails at open
  }
}

/**
 * A shape of "batch" (first) and positive integers.
 * @param {unknown} shape
 * @param {string} what
 */
export function checkShape(shape, what) {
  if (!Array.isArray(shape) || shape.length < 1 || shape[0] !== 'batch' ||
      shape.slice(1).some((dim) => !(Number.isInteger(dim) && dim >= 1))) {
    throw new ManifestError(`${what} has shape ${JSON.stringify(shape)}; expected ["batch", positive integers...]`);
  }
}

/**
 * A shape with its batch symbol replaced.
 * @param {(string|number)[]} shape
 * @param {number} batch
 * @returns {number[]}
 */
export function concreteShape(shape, batch) {
  return shape.map((dim) => (dim === 'batch' ? batch : Number(dim)));
}

/** @param {number[]} dims */
export function sizeOf(dims) { return dims.reduce((a, b) => a * b, 1); }


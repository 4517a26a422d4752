// The onnxruntime backend: one segment step through onnxruntime-web or onnxruntime-node (injected).
import { ArtifactError } from './errors.js';

/**
 * The subset of the onnxruntime JavaScript API used here (onnxruntime-web and onnxruntime-node both have it).
 * @typedef {object} OrtModule
 * @property {{create(model: Uint8Array, options?: object): Promise<any>}} InferenceSession
 * @property {new (type: string, data: any, dims: readonly number[]) => any} Tensor
 */

/**
 * The last session creation per onnxruntime module. onnxruntime-web keeps a graph's external data (weights.bin) in
 * one table per WebAssembly instance, by path, while it creates a session, and empties it after: two creations at
 * once (two artifacts opened together) can read each other's weights, silently. So sessions are created one at a
 * time per module.
 * @type {WeakMap<object, Promise<unknown>>}
 */
const creating = new WeakMap();

/**
 * ``ort.InferenceSession.create`` once the module's earlier creations have ended.
 * @param {OrtModule} ort @param {Uint8Array} bytes @param {object} options
 */
function createSession(ort, bytes, options) {
  const made = (creating.get(ort) ?? Promise.resolve()).then(() => ort.InferenceSession.create(bytes, options));
  creating.set(ort, made.catch(() => undefined));
  return made;
}

/** Runs one graph (a segment step or a decode step) by input name; calls are serialised. */
export class OrtProgram {
  /**
   * @param {any} session  an onnxruntime InferenceSession
   * @param {OrtModule} ort
   */
  constructor(session, ort) {
    this.session = session;
    this.ort = ort;
    this._queue = Promise.resolve();
  }

  /**
   * Load a graph and check its inputs and outputs against the manifest's lists (names in order, and
   * dtypes and ranks where the package reports them).
   * @param {OrtModule} ort
   * @param {Uint8Array} bytes
   * @param {{inputs: any[], outputs: any[]}} io
   * @param {string} what   the file, for messages
   * @param {object} [sessionOptions]
   */
  static async load(ort, bytes, io, what, sessionOptions = {}) {
    let session;
    try {
      session = await createSession(ort, bytes, { graphOptimizationLevel: 'all', ...sessionOptions });
    } catch (err) {
      throw new ArtifactError(`onnxruntime cannot load ${what}: ${String(/** @type {Error} */ (err).message).split('\n')[0].slice(0, 300)}`, { cause: err });
    }
    for (const [kind, names, meta, listed] of /** @type {const} */ ([
      ['input', session.inputNames, session.inputMetadata, io.inputs],
      ['output', session.outputNames, session.outputMetadata, io.outputs]])) {
      const got = names.map((/** @type {string} */ n, /** @type {number} */ i) => {
        const m = meta?.[i];
        return m && m.isTensor ? `${n}:${m.type}:${m.shape.length}` : `${n}`;
      });
      const want = listed.map((e, i) => {
        const m = meta?.[i];
        return m && m.isTensor ? `${e.name}:${e.dtype}:${e.shape.length}` : `${e.name}`;
      });
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw new ArtifactError(`the ONNX graph's ${kind}s ${JSON.stringify(got)} do not match the manifest's ${JSON.stringify(want)} (${what})`);
      }
    }
    return new OrtProgram(session, ort);
  }

  /**
   * Run with feeds by name; returns the outputs' data by name. One run at a time per program.
   * @param {Record<string, {type: string, data: any, dims: number[]}>} feeds
   * @returns {Promise<Record<string, any>>}
   */
  run(feeds) {
    const go = async () => {
      /** @type {Record<string, any>} */
      const tensors = {};
      for (const [name, f] of Object.entries(feeds)) tensors[name] = new this.ort.Tensor(f.type, f.data, f.dims);
      const out = await this.session.run(tensors);
      /** @type {Record<string, any>} */
      const data = {};
      for (const [name, t] of Object.entries(out)) data[name] = /** @type {any} */ (t).data;
      return data;
    };
    const result = this._queue.then(go, go);
    this._queue = result.then(() => undefined, () => undefined);
    return result;
  }
}

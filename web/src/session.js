// InfiniSession: the stateful loop over an exported segment step (mirrors runtime/session.py).
import { loadArtifact } from './artifact.js';
import { InfiniRuntimeError, InputError, NoTokenizerError, StateError } from './errors.js';
import { checkIds } from './ids.js';
import { concreteShape, sizeOf } from './manifest.js';
import { Rng, argmax, checkSampling, sampleToken } from './sampling.js';
import { urlSource } from './source.js';
import { decodeStateFile, encodeStateFile } from './state_file.js';
import { advanceDecode, cacheFromRows, cacheRowsOf } from './decode.js';
import { StopMatcher, TextStream, checkStop } from './tokenizer.js';

/**
 * A float32 result: ``data`` in row-major order with shape ``dims``.
 * @typedef {{data: Float32Array, dims: number[]}} FloatTensor
 */

/**
 * Options of the text calls; each defaults to the manifest's ``generation`` section.
 * @typedef {object} TextOptions
 * @property {number} [maxNewTokens]
 * @property {number} [temperature]  0: greedy
 * @property {number | null} [topK]
 * @property {number | null} [topP]
 * @property {number | null} [seed]
 * @property {string | string[]} [stop]  generation ends before the first of these strings (left out of the text)
 */

/**
 * Streams token ids through an exported Infini-Transformer in constant memory.
 *
 * The state is the per-layer compressive memory after the last *complete* segment, plus the tokens of
 * a pending partial segment (fewer than ``segmentLen``). A partial segment is run padded, its logits
 * returned for the real tokens only, and its memory write deferred until the segment is complete:
 * feeding a text in one call or in chunks of any sizes gives the same logits and the same final state.
 * Failed calls leave the session exactly as it was. Calls on one session (and its forks) run one at a time.
 */
export class InfiniSession {
  /**
   * @param {import('./artifact.js').LoadedArtifact} artifact
   * @param {number} [batchSize]
   */
  constructor(artifact, batchSize = 1) {
    this.artifact = artifact;
    this.manifest = artifact.manifest;
    this.segmentLen = artifact.manifest.segmentLen;
    this.vocabSize = artifact.manifest.vocabSize;
    /** The decode program's spec when tokens inside a segment go through it (else null). */
    this.decodeSpec = artifact.decode ? artifact.manifest.decode : null;
    /** @type {number[]} where each segment-state tensor sits in the decode state */
    this._segIdx = [];
    if (this.decodeSpec) {
      const names = this.decodeSpec.state.map((e) => e.name);
      this._segIdx = artifact.manifest.state.map((e) => names.indexOf(e.name));
    }
    /** @type {number} */ this.batchSize = batchSize;
    /** @type {Float32Array[]} the state (with a decode program: the decode state) */ this._state = [];
    /** @type {number[][]} per batch row, the tokens of the incomplete segment */ this._pending = [];
    /** @type {Float32Array[]} the current segment's keys and values (B, H, N, dh); never written in place */
    this._cache = [];
    /** @type {Float32Array | null} logits (B, V) of the last token consumed */ this._last = null;
    /** @type {number} */ this.tokensConsumed = 0;
    /** The artifact's tokenizer (text in and out), or null when it has none. */
    this.tokenizer = artifact.tokenizer ?? null;
    this._lock = { tail: Promise.resolve(), paused: false };
    this._resetNow(batchSize);
  }

  /** Whether tokens inside a segment go through the artifact's decode program (one call per chunk). */
  get decoding() { return this.decodeSpec !== null; }

  /** Tokens of the current segment consumed so far (0 at a segment boundary). */
  get position() { return this._pending[0].length; }

  /**
   * Open an artifact: a URL (string or URL, the folder or its manifest.json) or an ArtifactSource;
   * manifest.json is checked, file sizes and sha256 verified (where the platform can hash), the program loaded.
   * @param {string | URL | import('./source.js').ArtifactSource} location
   * @param {import('./artifact.js').OpenOptions & {batchSize?: number, fetch?: typeof fetch}} options
   * @returns {Promise<InfiniSession>}
   */
  static async open(location, options) {
    const source = typeof location === 'string' || location instanceof URL ? urlSource(location, { fetch: options.fetch }) : location;
    const artifact = await loadArtifact(source, options);
    return new InfiniSession(artifact, options.batchSize ?? 1);
  }

  // ---- state -------------------------------------------------------------------------------------

  /** @param {unknown} batchSize */
  _checkBatch(batchSize) {
    const max = this.manifest.maxBatch;
    if (!(Number.isInteger(batchSize) && /** @type {number} */ (batchSize) >= 1 && /** @type {number} */ (batchSize) <= max)) {
      throw new InputError(`batch size must be an integer in [1, ${max}], got ${JSON.stringify(batchSize)}`);
    }
  }

  /** @param {number} batchSize */
  _resetNow(batchSize) {
    this._checkBatch(batchSize);
    this.batchSize = batchSize;
    this._state = this.artifact.initial.map((s) => {
      const out = new Float32Array(s.length * batchSize);
      for (let b = 0; b < batchSize; b++) out.set(s, b * s.length);
      return out;
    });
    this._pending = Array.from({ length: batchSize }, () => []);
    this.tokensConsumed = 0;
    this._last = null;
    if (this.decodeSpec) {
      this._state = this._decodeStateFrom(this._state, batchSize);
      this._cache = this.decodeSpec.cache.map((e) => new Float32Array(sizeOf(concreteShape(e.shape, batchSize))));
    }
  }

  /**
   * The decode state at position 0 continuing from a segment state: the pending write is zero.
   * @param {Float32Array[]} seg @param {number} batch
   */
  _decodeStateFrom(seg, batch) {
    const dec = /** @type {import('./decode_spec.js').DecodeSpec} */ (this.decodeSpec);
    /** @type {Float32Array[]} */
    const out = dec.state.map((e) => new Float32Array(sizeOf(concreteShape(e.shape, batch))));
    /** @type {number[]} */ (this._segIdx).forEach((k, j) => { out[k] = seg[j]; });
    return out;
  }

  /** @param {Float32Array[]} state the session's state list -> the segment state */
  _segmentState(state) {
    return this.decodeSpec ? /** @type {number[]} */ (this._segIdx).map((k) => state[k]) : state;
  }

  /**
   * Run ``fn`` when every earlier call on this session (or its forks) has finished.
   * @template T @param {() => Promise<T>} fn @returns {Promise<T>}
   */
  _exclusive(fn) {
    if (this._lock.paused) {
      return Promise.reject(new InputError('a generateTextIter loop is running on this session or one of its forks ' +
        '(they share the programs): finish or break out of the loop before another call'));
    }
    const result = this._lock.tail.then(fn, fn);
    this._lock.tail = result.then(() => undefined, () => undefined);
    return result;
  }

  /**
   * Back to the initial state, optionally with another batch size.
   * @param {number} [batchSize]
   * @returns {Promise<void>}
   */
  reset(batchSize) {
    return this._exclusive(async () => this._resetNow(batchSize === undefined ? this.batchSize : batchSize));
  }

  /**
   * An independent session at the same point: shares the loaded program, copies the state.
   * @returns {InfiniSession}
   */
  fork() {
    const twin = Object.create(InfiniSession.prototype);
    Object.assign(twin, this);
    twin._state = this._state.map((s) => s.slice());
    twin._pending = this._pending.map((r) => r.slice());
    return twin;  // the cache and last logits are never written in place: shared safely
  }

  /** Bytes of the state after the last complete segment (constant: independent of how many tokens were streamed). */
  get stateBytes() { return this._segmentState(this._state).reduce((n, s) => n + s.byteLength, 0); }

  /**
   * Copies of the state after the last complete segment, by base name (``memory.0``, ``norm.0``, ...).
   * @returns {Record<string, FloatTensor>}
   */
  get state() {
    /** @type {Record<string, FloatTensor>} */
    const out = {};
    const seg = this._segmentState(this._state);
    this.manifest.state.forEach((e, i) => { out[e.name] = { data: seg[i].slice(), dims: concreteShape(e.shape, this.batchSize) }; });
    return out;
  }

  /** Tokens of the incomplete segment, not yet written to memory: B rows of p < segmentLen tokens. */
  get pendingTokens() { return this._pending.map((r) => r.slice()); }

  /**
   * Replace the state (checked: names, shapes, finiteness); nothing changes if it fails.
   * @param {Record<string, {data: Float32Array, dims: number[]}>} state
   * @param {import('./ids.js').TokenIds | null} [pending]
   * @param {number | null} [tokensConsumed]
   * @returns {Promise<void>}
   */
  setState(state, pending = null, tokensConsumed = null) {
    return this._exclusive(async () => {
      const names = this.manifest.state.map((e) => e.name);
      if (typeof state !== 'object' || state === null) throw new StateError('state must be an object of {data, dims} by name');
      const got = Object.keys(state).sort();
      if (JSON.stringify(got) !== JSON.stringify([...names].sort())) {
        throw new StateError(`state has tensors ${JSON.stringify(got)}, this model expects ${JSON.stringify([...names].sort())}`);
      }
      const batch = state[names[0]]?.dims?.[0];
      try { this._checkBatch(batch); } catch (err) { throw new StateError(/** @type {Error} */ (err).message); }
      const arrays = this.manifest.state.map((e) => {
        const t = state[e.name];
        const want = concreteShape(e.shape, /** @type {number} */ (batch));
        if (!(t?.data instanceof Float32Array)) throw new StateError(`state tensor ${JSON.stringify(e.name)} must be a Float32Array (float32)`);
        if (JSON.stringify(t.dims) !== JSON.stringify(want) || t.data.length !== sizeOf(want)) {
          throw new StateError(`state tensor ${JSON.stringify(e.name)} has shape ${JSON.stringify(t.dims)}, expected ${JSON.stringify(want)}`);
        }
        if (!t.data.every(Number.isFinite)) throw new StateError(`state tensor ${JSON.stringify(e.name)} holds NaN or inf; refusing a corrupt state`);
        return t.data.slice();
      });
      let rows = Array.from({ length: /** @type {number} */ (batch) }, () => /** @type {number[]} */ ([]));
      if (pending !== null) rows = checkIds(pending, this.vocabSize, /** @type {number} */ (batch)).rows;
      if (rows[0].length >= this.segmentLen) throw new StateError(`pending tokens must be fewer than segmentLen=${this.segmentLen}, got ${rows[0].length}`);
      await this._setSegmentState(arrays, rows, tokensConsumed ?? rows[0].length, /** @type {number} */ (batch));
    });
  }

  /**
   * Continue from a segment state and pending tokens; with a decode program the pending tokens are run
   * through it (on a copy: nothing changes if that fails).
   * @param {Float32Array[]} seg @param {number[][]} pending @param {number} consumed @param {number} batch
   */
  async _setSegmentState(seg, pending, consumed, batch) {
    if (!this.decodeSpec) {
      this._commit(seg, pending, consumed, batch);
      this._last = null;
      return;
    }
    const twin = this.fork();
    twin._resetNow(batch);
    twin._state = twin._decodeStateFrom(seg, batch);
    if (pending[0].length) await twin._advance(pending, 'last');
    Object.assign(this, { batchSize: batch, _state: twin._state, _pending: twin._pending, _cache: twin._cache, _last: twin._last });
    this.tokensConsumed = consumed;
  }

  /**
   * @param {Float32Array[]} state @param {number[][]} pending @param {number} consumed @param {number} [batch]
   */
  _commit(state, pending, consumed, batch = this.batchSize) {
    this._state = state; this._pending = pending; this.tokensConsumed = consumed; this.batchSize = batch;
  }

  /**
   * The state as the bytes of a state file (the Python runtime's ``save_state`` format, an uncompressed .npz):
   * version 2 (with the decode state: pending write, cache rows, last logits) when decoding, else version 1.
   * @returns {Promise<Uint8Array>}
   */
  exportState() {
    return this._exclusive(async () => {
      if (!this.decodeSpec) {
        return encodeStateFile(this.manifest, { state: this._state, pending: this._pending, batchSize: this.batchSize,
          tokensConsumed: this.tokensConsumed, version: 1 });
      }
      const cacheRows = cacheRowsOf(this.decodeSpec, this._cache, this.batchSize, this.position);
      return encodeStateFile(this.manifest, { state: this._state, pending: this._pending, batchSize: this.batchSize,
        tokensConsumed: this.tokensConsumed, version: 2, cacheRows, last: this._last });
    });
  }

  /**
   * Load state-file bytes written by this runtime or the Python one for the *same model*; anything else
   * throws StateError and changes nothing. A version-1 file opened with a decode program is continued by
   * running its pending tokens through it.
   * @param {Uint8Array} bytes
   * @param {string} [where]  for messages
   * @returns {Promise<void>}
   */
  importState(bytes, where) {
    return this._exclusive(async () => {
      if (!(bytes instanceof Uint8Array)) throw new StateError('a state file is read from a Uint8Array');
      const snap = decodeStateFile(this.manifest, bytes, where);
      if (snap.version !== 2) {
        await this._setSegmentState(snap.state, snap.pending, snap.tokensConsumed, snap.batchSize);
        return;
      }
      if (!this.decodeSpec) {
        throw new StateError(`${where ?? 'the state file'} holds a decode state (version 2); this session runs without ` +
          'a decode program: open the artifact with its decode program');
      }
      const cache = cacheFromRows(this.decodeSpec, /** @type {Float32Array[]} */ (snap.cacheRows), snap.batchSize,
        snap.pending[0].length);
      this._commit(snap.state, snap.pending, snap.tokensConsumed, snap.batchSize);
      this._cache = cache;
      this._last = snap.last ?? null;
    });
  }

  // ---- streaming ---------------------------------------------------------------------------------

  /**
   * One padded segment through the program.
   * @param {number[][]} rows  B rows of exactly segmentLen tokens
   * @param {Float32Array[]} state
   * @returns {Promise<{logits: Float32Array, state: Float32Array[]}>}
   */
  async _run(rows, state) {
    const B = rows.length; const N = this.segmentLen; const man = this.manifest;
    const ids = new BigInt64Array(B * N);
    rows.forEach((r, b) => { for (let j = 0; j < r.length; j++) ids[b * N + j] = BigInt(r[j]); });
    /** @type {Record<string, {type: string, data: any, dims: number[]}>} */
    const feeds = { [man.idsName]: { type: 'int64', data: ids, dims: [B, N] } };
    man.state.forEach((e, i) => { feeds[e.input] = { type: 'float32', data: state[i], dims: concreteShape(e.shape, B) }; });
    let out;
    try {
      out = await this.artifact.program.run(feeds);
    } catch (err) {
      if (err instanceof InfiniRuntimeError) throw err;
      throw new InfiniRuntimeError(`the onnxruntime backend failed on a segment of shape [${B}, ${N}]: ` +
        `${String(/** @type {Error} */ (err)?.message ?? err).split('\n')[0].slice(0, 300)}`, { cause: err });
    }
    return { logits: out[man.logitsName], state: man.state.map((e) => out[e.output]) };
  }

  /**
   * @param {import('./ids.js').TokenIds} ids
   * @param {'all' | 'last'} keep
   */
  async _advance(ids, keep) {
    const { rows, oneRow } = checkIds(ids, this.vocabSize, this.batchSize);
    const B = rows.length; const T = rows[0].length; const N = this.segmentLen; const V = this.vocabSize;
    if (this.decodeSpec) {
      const out = keep === 'all' ? new Float32Array(B * T * V) : null;
      const last = await advanceDecode(this, rows, out);
      if (out) return { data: out, dims: oneRow ? [T, V] : [B, T, V] };
      return last === null ? null : { data: last, dims: [B, V] };
    }
    const p = this._pending[0].length;
    const buf = rows.map((r, b) => (p ? this._pending[b].concat(r) : r));
    const nFull = Math.floor((p + T) / N);
    const all = keep === 'all' ? new Float32Array(B * T * V) : null;
    let written = 0;
    /** @type {Float32Array | null} */
    let last = null;
    /** @param {Float32Array} logits @param {number} lo @param {number} hi */
    const take = (logits, lo, hi) => {
      if (all && hi > lo) {
        for (let b = 0; b < B; b++) all.set(logits.subarray((b * N + lo) * V, (b * N + hi) * V), (b * T + written) * V);
        written += hi - lo;
      }
      last = new Float32Array(B * V);
      for (let b = 0; b < B; b++) last.set(logits.subarray((b * N + hi - 1) * V, (b * N + hi) * V), b * V);
    };
    let state = this._state;
    for (let s = 0; s < nFull; s++) {
      const res = await this._run(buf.map((r) => r.slice(s * N, (s + 1) * N)), state);
      state = res.state;
      take(res.logits, Math.max(p - s * N, 0), N);  // logits of tokens returned by an earlier call are dropped
    }
    const rest = buf.map((r) => r.slice(nFull * N));
    const r = rest[0].length;
    if (r && T) {
      const res = await this._run(rest, state);  // memory write of a partial segment is not kept
      take(res.logits, Math.max(p - nFull * N, 0), r);
    }
    // commit: nothing above touched the session
    this._commit(state, rest, this.tokensConsumed + T);
    if (last !== null) this._last = last;
    if (all) return { data: all, dims: oneRow ? [T, V] : [B, T, V] };
    return last === null ? null : { data: /** @type {Float32Array} */ (last), dims: [B, V] };
  }

  /**
   * Stream ``ids`` (one row of T integers, or B rows); return their logits ((T, V) or (B, T, V), float32).
   * @param {import('./ids.js').TokenIds} ids
   * @returns {Promise<FloatTensor>}
   */
  feed(ids) {
    return this._exclusive(() => this._advance(ids, 'all')).then((x) => /** @type {FloatTensor} */ (x));
  }

  /**
   * Like ``feed`` but keeps only the last token's logits (B, V): memory independent of the input length.
   * Null when no token has been run yet.
   * @param {import('./ids.js').TokenIds} ids
   * @returns {Promise<FloatTensor | null>}
   */
  stream(ids) {
    return this._exclusive(() => this._advance(ids, 'last'));
  }

  // ---- generation --------------------------------------------------------------------------------

  /**
   * Feed ``prompt`` then choose ``maxNewTokens`` tokens per row; greedy when temperature is 0.
   * The session continues from where it was: the prompt and the generated tokens are consumed. With a
   * decode program each new token costs one decode call. On failure the session is left as it was.
   * @param {import('./ids.js').TokenIds} prompt
   * @param {{maxNewTokens: number} & import('./sampling.js').SamplingOptions} options
   * @returns {Promise<number[][]>}  B rows of generated token ids
   */
  generate(prompt, options) {
    return this._exclusive(async () => {
      const n = options?.maxNewTokens;
      if (!(Number.isInteger(n) && n >= 0)) throw new InputError(`maxNewTokens must be an integer >= 0, got ${JSON.stringify(n)}`);
      const opts = checkSampling(options);
      const { rows } = checkIds(prompt, this.vocabSize, this.batchSize);
      if (rows[0].length === 0 && this.tokensConsumed === 0) throw new InputError('generate needs at least one prompt token on a fresh session');
      if (rows[0].length === 0 && this._pending[0].length === 0 && !this._last) {
        throw new InputError('generate with an empty prompt needs a pending token to continue from; feed at least one token');
      }
      const rng = new Rng(opts.seed);
      const saved = { batchSize: this.batchSize, _state: this._state, _pending: this._pending, _cache: this._cache,
        _last: this._last, tokensConsumed: this.tokensConsumed };
      const V = this.vocabSize;
      try {
        let last = rows[0].length ? /** @type {FloatTensor} */ (await this._advance(rows, 'last')).data : await this._lastLogits();
        const out = rows.map(() => /** @type {number[]} */ ([]));
        for (let i = 0; i < n; i++) {
          const toks = out.map((o, b) => {
            const row = last.subarray(b * V, (b + 1) * V);
            const t = opts.temperature === 0 ? argmax(row) : sampleToken(row, opts, rng);
            o.push(t);
            return t;
          });
          last = /** @type {FloatTensor} */ (await this._advance(toks.map((t) => [t]), 'last')).data;  // one decode call each
        }
        return out;
      } catch (err) {
        Object.assign(this, saved);  // nothing is written in place: the saved arrays are as they were
        throw err;
      }
    });
  }

  // ---- text ----------------------------------------------------------------------------------------

  /** @returns {import('./tokenizer.js').TextTokenizer} */
  _needTokenizer() {
    if (!this.tokenizer) {
      throw new NoTokenizerError("this artifact has no tokenizer (its manifest has no 'tokenizer' section): text calls need an " +
        'artifact exported with a tokenizer.json; use token ids with feed, stream and generate');
    }
    return this.tokenizer;
  }

  /**
   * Token ids of ``text`` with the artifact's tokenizer (``bos`` first when its manifest says ``add_bos``).
   * @param {string} text
   * @returns {number[]}
   */
  encode(text) { return this._needTokenizer().encode(text); }

  /**
   * Text of token ids with the artifact's tokenizer.
   * @param {ArrayLike<number | bigint>} ids
   * @param {{skipSpecialTokens?: boolean}} [options]  leave out special tokens (default true, as Python's)
   * @returns {string}
   */
  decode(ids, options) { return this._needTokenizer().decode(ids, options); }

  /**
   * Feed the text ``prompt`` and continue it: the text generated, up to an eos token or a stop string (left out),
   * or ``maxNewTokens`` tokens; the pieces of ``generateTextIter`` joined (as the Python runtime's ``generate_text``).
   * @param {string} prompt
   * @param {TextOptions} [options]  defaults: the manifest's generation section
   * @returns {Promise<string>}
   */
  async generateText(prompt, options) {
    const iter = this.generateTextIter(prompt, options);
    for (;;) {
      const r = await iter.next();
      if (r.done) return r.value;
    }
  }

  /**
   * Like ``generateText``, yielding the text as tokens come: each piece whole characters (an incomplete one waits
   * for its next token; a possible beginning of a stop string waits until decided); the iterator's return value is
   * the whole text. The prompt is encoded with ``bos`` first where the manifest says ``add_bos`` and the session is
   * fresh (a continuation gets none). The session continues from where it was (the prompt and every generated
   * token, an eos too, are consumed); breaking out of the loop keeps what was generated. Other calls on the
   * session (and its forks) wait until the loop ends; made from inside the loop, they throw InputError. If
   * generation fails, the session is left as it was before the call.
   * @param {string} prompt
   * @param {TextOptions} [options]
   * @returns {AsyncGenerator<string, string, undefined>}
   */
  async *generateTextIter(prompt, options = {}) {
    const tok = this._needTokenizer();
    if (typeof prompt !== 'string') throw new InputError(`prompt must be a string, got ${prompt === null ? 'null' : typeof prompt}`);
    if (typeof options !== 'object' || options === null) throw new InputError('options must be an object');
    const defaults = this.manifest.generation;
    const n = options.maxNewTokens ?? defaults.maxNewTokens;
    if (!(Number.isInteger(n) && n >= 0)) throw new InputError(`maxNewTokens must be an integer >= 0, got ${JSON.stringify(n)}`);
    const opts = checkSampling({ temperature: options.temperature ?? defaults.temperature,
      topK: options.topK === undefined ? defaults.topK : options.topK,
      topP: options.topP === undefined ? defaults.topP : options.topP, seed: options.seed ?? null });
    const stops = checkStop(options.stop);
    if (this.batchSize !== 1) throw new InputError(`text generation runs one sequence: this session has batch size ${this.batchSize}; reset(1) first`);
    const eos = new Set(tok.eos);
    const release = await this._acquire();
    const saved = { batchSize: this.batchSize, _state: this._state, _pending: this._pending, _cache: this._cache,
      _last: this._last, tokensConsumed: this.tokensConsumed };
    try {
      const ids = tok.encode(prompt, { addBos: tok.addBos && this.tokensConsumed === 0 });  // bos on a fresh session
      if (ids.length === 0) {
        throw new InputError(`the prompt ${JSON.stringify(prompt.slice(0, 40))} encodes to no tokens; generation needs at least one`);
      }
      const rng = new Rng(opts.seed);
      let last = /** @type {FloatTensor} */ (await this._advance([ids], 'last')).data;
      const stream = new TextStream(tok, ids);
      const stop = new StopMatcher(stops);
      let text = '';
      for (let i = 0; i < n && !stop.done; i++) {
        const t = opts.temperature === 0 ? argmax(last) : sampleToken(last, opts, rng);
        last = /** @type {FloatTensor} */ (await this._advance([[t]], 'last')).data;
        if (eos.has(t)) break;
        const piece = stop.push(stream.push(t));
        if (piece) { text += piece; yield* this._paused(piece); }
      }
      if (!stop.done) {  // the end: what was held back for an incomplete character or a possible stop string
        const rest = stop.push(stream.flush()) + stop.end();
        if (rest) { text += rest; yield* this._paused(rest); }
      }
      return text;
    } catch (err) {
      Object.assign(this, saved);  // nothing is written in place: the saved arrays are as they were
      throw err;
    } finally {
      release();
    }
  }

  /**
   * Yield ``piece`` with the session marked busy: calls made while the caller holds the piece throw.
   * @param {string} piece
   */
  async *_paused(piece) {
    this._lock.paused = true;
    try { yield piece; } finally { this._lock.paused = false; }
  }

  /**
   * Wait for every earlier call, then hold the session until the returned function is called.
   * @returns {Promise<() => void>}
   */
  async _acquire() {
    if (this._lock.paused) await this._exclusive(async () => undefined);  // throws the message above
    /** @type {() => void} */ let release = () => {};
    const gate = new Promise((ok) => { release = () => ok(undefined); });
    const ready = this._lock.tail;
    this._lock.tail = ready.then(() => gate);
    await ready;
    return release;
  }

  /** Logits of the last token consumed (re-run from a copy of the pending tokens if not kept). */
  async _lastLogits() {
    if (this._last) return this._last;
    const twin = this.fork();
    const pend = twin._pending;
    twin._pending = pend.map(() => []);
    return /** @type {FloatTensor} */ (await twin._advance(pend, 'last')).data;
  }
}

// The decode program (manifest.decode): tokens inside a segment, with a cache of the segment's keys and values.
import { InfiniRuntimeError } from './errors.js';
import { concreteShape } from './manifest.js';

/**
 * One decode call: ``rows`` (B rows of n tokens) at position ``p`` of the current segment. The cache outputs are
 * the chunk's rows, or with ``cacheOut`` the whole caches (the session's rows before ``p``, the chunk's at ``p``).
 * @param {import('./session.js').InfiniSession} session
 * @param {number[][]} rows @param {number} p @param {Float32Array[]} state
 * @param {Float32Array[]} [cache]  the caches to read (default: the session's)
 * @returns {Promise<{logits: Float32Array, state: Float32Array[], rows: Float32Array[]}>}
 */
export async function runDecode(session, rows, p, state, cache = session._cache) {
  const dec = /** @type {import('./decode_spec.js').DecodeSpec} */ (session.decodeSpec);
  const B = rows.length; const n = rows[0].length;
  if (dec.cacheOut && B > 1 && n > 1 && p > 0) return runByRow(session, rows, p, state, cache);
  const ids = new BigInt64Array(B * n);
  rows.forEach((r, b) => { for (let j = 0; j < n; j++) ids[b * n + j] = BigInt(r[j]); });
  /** @type {Record<string, {type: string, data: any, dims: number[]}>} */
  const feeds = { [dec.ids]: { type: 'int64', data: ids, dims: [B, n] },
    [dec.position]: { type: 'int64', data: BigInt64Array.of(BigInt(p)), dims: [1] } };
  dec.state.forEach((e, i) => { feeds[e.input] = { type: 'float32', data: state[i], dims: concreteShape(e.shape, B) }; });
  dec.cache.forEach((e, i) => { feeds[e.input] = { type: 'float32', data: cache[i], dims: concreteShape(e.shape, B) }; });
  let out;
  try {
    out = await /** @type {import('./backend_ort.js').OrtProgram} */ (session.artifact.decode).run(feeds);
  } catch (err) {
    if (err instanceof InfiniRuntimeError) throw err;
    throw new InfiniRuntimeError(`the onnxruntime backend's decode program failed on ${n} tokens at position ${p}: ` +
      `${String(/** @type {Error} */ (err)?.message ?? err).split('\n')[0].slice(0, 300)}`, { cause: err });
  }
  return { logits: out[dec.logits], state: dec.state.map((e) => out[e.output]), rows: dec.cache.map((e) => out[e.output]) };
}

/**
 * ``runDecode`` one batch row at a time (onnxruntime's GroupQueryAttention takes several tokens after a past only
 * at batch 1), the results joined along the batch axis.
 * @param {import('./session.js').InfiniSession} session
 * @param {number[][]} rows @param {number} p @param {Float32Array[]} state @param {Float32Array[]} cache
 */
async function runByRow(session, rows, p, state, cache) {
  const B = rows.length;
  const row = (/** @type {Float32Array} */ a, /** @type {number} */ b) => a.subarray(b * a.length / B, (b + 1) * a.length / B);
  const parts = [];
  for (let b = 0; b < B; b++) {
    parts.push(await runDecode(session, [rows[b]], p, state.map((a) => row(a, b)), cache.map((a) => row(a, b))));
  }
  const join = (/** @type {Float32Array[]} */ arrays) => {
    const out = new Float32Array(arrays.reduce((k, a) => k + a.length, 0));
    let at = 0;
    for (const a of arrays) { out.set(a, at); at += a.length; }
    return out;
  };
  return { logits: join(parts.map((r) => r.logits)), state: state.map((_, i) => join(parts.map((r) => r.state[i]))),
    rows: cache.map((_, i) => join(parts.map((r) => r.rows[i]))) };
}

/**
 * Whole segments at a boundary through the segment step, everything else through the decode program;
 * the cache rows of the last call are written (into fresh arrays) only after every call succeeded.
 * Returns the last token's logits (B, V).
 * @param {import('./session.js').InfiniSession} session
 * @param {number[][]} rows @param {Float32Array | null} all  where to put every token's logits, if wanted
 */
export async function advanceDecode(session, rows, all) {
  const B = rows.length; const T = rows[0].length; const N = session.segmentLen; const V = session.vocabSize;
  const segIdx = /** @type {number[]} */ (session._segIdx);
  let state = session._state; let p = session.position; let i = 0; let last = session._last;
  /** @type {{start: number, n: number, rows: Float32Array[]} | null} */
  let newRows = null;
  while (i < T) {
    /** @type {number} */ let n; /** @type {Float32Array} */ let logits;
    if (p === 0 && T - i >= N) {
      const res = await session._run(rows.map((r) => r.slice(i, i + N)), session._segmentState(state));
      state = state.slice();
      segIdx.forEach((k, j) => { state[k] = res.state[j]; });
      n = N; logits = res.logits; newRows = null;
    } else {
      n = Math.min(N - p, T - i);
      const res = await runDecode(session, rows.map((r) => r.slice(i, i + n)), p, state);
      state = res.state; logits = res.logits;
      newRows = p + n < N ? { start: p, n, rows: res.rows } : null;
    }
    if (all) for (let b = 0; b < B; b++) all.set(logits.subarray(b * n * V, (b + 1) * n * V), (b * T + i) * V);
    last = new Float32Array(B * V);
    for (let b = 0; b < B; b++) last.set(logits.subarray((b * n + n - 1) * V, (b * n + n) * V), b * V);
    p = (p + n) % N; i += n;
  }
  // commit: nothing above touched the session
  let cache = session._cache;
  if (newRows && /** @type {import('./decode_spec.js').DecodeSpec} */ (session.decodeSpec).cacheOut) {
    cache = newRows.rows;  // the whole caches of the last call: its rows before its position are the session's
  } else if (newRows) {
    const { start, n, rows: r } = newRows;
    cache = /** @type {import('./decode_spec.js').DecodeSpec} */ (session.decodeSpec).cache.map((e, j) => {
      const [b, H, , dh] = concreteShape(e.shape, B);
      const c = session._cache[j].slice();
      for (let bh = 0; bh < b * H; bh++) c.set(r[j].subarray(bh * n * dh, (bh + 1) * n * dh), (bh * N + start) * dh);
      return c;
    });
  }
  const pending = rows.map((r, b) => (p <= T ? r.slice(T - p) : session._pending[b].concat(r).slice(-p)));
  session._commit(state, p === 0 ? rows.map(() => []) : pending, session.tokensConsumed + T);
  session._cache = cache; session._last = last;
  return last;
}

/**
 * The cache rows of the first ``p`` positions: per cache entry (B, H, p, dh), as a state file stores them.
 * @param {import('./decode_spec.js').DecodeSpec} spec @param {Float32Array[]} cache @param {number} batch @param {number} p
 */
export function cacheRowsOf(spec, cache, batch, p) {
  return spec.cache.map((e, i) => {
    const [B, H, N, dh] = concreteShape(e.shape, batch);
    const out = new Float32Array(B * H * p * dh);
    for (let bh = 0; bh < B * H; bh++) out.set(cache[i].subarray(bh * N * dh, (bh * N + p) * dh), bh * p * dh);
    return out;
  });
}

/**
 * Full caches (B, H, N, dh) holding ``rows`` (B, H, p, dh) at the first ``p`` positions, zeros after.
 * @param {import('./decode_spec.js').DecodeSpec} spec @param {Float32Array[]} rows @param {number} batch @param {number} p
 */
export function cacheFromRows(spec, rows, batch, p) {
  return spec.cache.map((e, i) => {
    const [B, H, N, dh] = concreteShape(e.shape, batch);
    const full = new Float32Array(B * H * N * dh);
    for (let bh = 0; bh < B * H; bh++) full.set(rows[i].subarray(bh * p * dh, (bh + 1) * p * dh), bh * N * dh);
    return full;
  });
}

// Next-token choice: greedy, or sampled with temperature, top-k and top-p from a seeded generator.
import { InputError } from './errors.js';

/**
 * @typedef {object} SamplingOptions
 * @property {number} [temperature]  0 (default): greedy
 * @property {number | null} [topK]  keep the k most likely tokens (ties with the k-th kept)
 * @property {number | null} [topP]  keep the smallest most-likely set whose probability reaches p
 * @property {number | null} [seed]  integer seed; the same seed gives the same tokens on every platform
 */

/**
 * Check sampling options (throws InputError), with the defaults filled in.
 * @param {SamplingOptions} opts
 */
export function checkSampling(opts) {
  const { temperature = 0, topK = null, topP = null, seed = null } = opts;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    throw new InputError(`temperature must be a finite number >= 0, got ${JSON.stringify(temperature)}`);
  }
  if (topK !== null && !(Number.isInteger(topK) && topK >= 1)) throw new InputError(`topK must be null or an integer >= 1, got ${JSON.stringify(topK)}`);
  if (topP !== null && !(typeof topP === 'number' && topP > 0 && topP <= 1)) throw new InputError(`topP must be null or a number in (0, 1], got ${JSON.stringify(topP)}`);
  if (seed !== null && !Number.isSafeInteger(seed)) throw new InputError(`seed must be null or an integer, got ${JSON.stringify(seed)}`);
  return { temperature, topK, topP, seed };
}

/**
 * The index of the largest value (the first one on ties, as numpy's argmax).
 * @param {ArrayLike<number>} row
 */
export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * The distribution a token is drawn from: softmax(logits / temperature) restricted to top-k, then top-p,
 * renormalised (float64; the same filtering as the Python runtime's ``_sample``).
 * @param {ArrayLike<number>} logits  one row (V)
 * @param {number} temperature  > 0
 * @param {number | null} topK
 * @param {number | null} topP
 * @returns {Float64Array}
 */
export function samplingProbs(logits, temperature, topK, topP) {
  const V = logits.length;
  // shifted before scaling (the same softmax): the largest logit is 0, so a tiny temperature cannot overflow
  let top = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > top) top = logits[i];
  const x = Float64Array.from(logits, (v) => (v - top) / temperature);
  if (topK !== null && topK < V) {
    const kth = Float64Array.from(x).sort()[V - topK];
    for (let i = 0; i < V; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  const probs = new Float64Array(V);
  let sum = 0;
  // the largest is 0 (and survives top-k): no overflow
  for (let i = 0; i < V; i++) { probs[i] = Math.exp(x[i]); sum += probs[i]; }
  for (let i = 0; i < V; i++) probs[i] /= sum;
  if (topP !== null && topP < 1) {
    const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
    let before = 0; let kept = 0;
    const keep = new Uint8Array(V);
    for (const i of order) {
      if (before <= topP) { keep[i] = 1; kept += probs[i]; }
      before += probs[i];
    }
    for (let i = 0; i < V; i++) probs[i] = keep[i] ? probs[i] / kept : 0;
  }
  return probs;
}

/** A seeded uniform generator on [0, 1) (xoshiro128**, seeded through splitmix32). */
export class Rng {
  /** @param {number | null} seed  null: a random seed */
  constructor(seed) {
    let s = seed === null ? Math.floor(Math.random() * 2 ** 52) : seed;
    const hi = Math.floor(s / 2 ** 32) >>> 0; let lo = s >>> 0;
    const mix = () => {
      lo = (lo + 0x9e3779b9) | 0;
      let z = lo ^ Math.imul(hi, 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      return (z ^ (z >>> 15)) >>> 0;
    };
    this.s = Uint32Array.of(mix(), mix(), mix(), mix());
    if (!this.s.some((v) => v !== 0)) this.s[0] = 1;
    s = 0;
  }

  /** @returns {number} a 32-bit unsigned integer */
  nextU32() {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
    return result;
  }

  /** @returns {number} uniform in [0, 1) with 53 random bits */
  next() { return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992; }
}

/** @param {number} x @param {number} k */
function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }

/**
 * Choose the next token of one row.
 * @param {ArrayLike<number>} logits  (V)
 * @param {{temperature: number, topK: number | null, topP: number | null}} opts
 * @param {Rng} rng
 */
export function sampleToken(logits, opts, rng) {
  if (opts.temperature === 0) return argmax(logits);
  const probs = samplingProbs(logits, opts.temperature, opts.topK, opts.topP);
  const u = rng.next();
  let acc = 0; let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] > 0) { acc += probs[i]; last = i; if (u < acc) return i; }
  }
  return last;
}

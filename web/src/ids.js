// Token ids in: numbers, bigints or integer typed arrays, one row (T) or rows (batch, T); checked here.
import { InputError } from './errors.js';

/**
 * Token ids accepted by the session: one row (an Array of integers or an integer typed array) or a batch
 * (an Array of such rows, all of one length), or ``{data, dims: [B, T]}``. An empty Array is no tokens
 * for every row of the session's batch.
 * @typedef {ArrayLike<number | bigint> | ArrayLike<ArrayLike<number | bigint>> | {data: ArrayLike<number | bigint>, dims: number[]}} TokenIds
 */

/**
 * @typedef {object} CheckedIds
 * @property {number[][]} rows  B rows of T integers in [0, vocab)
 * @property {boolean} oneRow   the input was a single row (results drop the batch axis where Python does)
 */

const FLOAT_ARRAYS = ['Float32Array', 'Float64Array', 'Float16Array'];

/**
 * @param {unknown} ids
 * @param {number} vocab
 * @param {number | null} batch  the batch size the ids must have (null: any)
 * @returns {CheckedIds}
 */
export function checkIds(ids, vocab, batch) {
  let rows; let oneRow = false;
  if (Array.isArray(ids) && ids.length === 0 && batch !== null) {
    rows = Array.from({ length: batch }, () => []); oneRow = batch === 1;  // no tokens, for every row
  } else if (ids && typeof ids === 'object' && !ArrayBuffer.isView(ids) && !Array.isArray(ids) && 'dims' in ids && 'data' in ids) {
    const t = /** @type {{data: ArrayLike<number|bigint>, dims: number[]}} */ (ids);
    if (!Array.isArray(t.dims) || t.dims.length !== 2) throw new InputError(`ids must have shape (T,) or (batch, T), got dims ${JSON.stringify(t.dims)}`);
    const [B, T] = t.dims;
    if (!(Number.isInteger(B) && Number.isInteger(T) && B >= 0 && T >= 0) || t.data?.length !== B * T) {
      throw new InputError(`ids data of length ${t.data?.length} does not fill dims [${t.dims}]`);
    }
    rows = Array.from({ length: B }, (_, b) => rowOf(sliceOf(t.data, b * T, (b + 1) * T), vocab));
  } else if (isRow(ids)) {
    rows = [rowOf(/** @type {ArrayLike<number|bigint>} */ (ids), vocab)]; oneRow = true;
  } else if (Array.isArray(ids) && ids.length > 0 && ids.every((r) => isRow(r) && !(Array.isArray(r) && r.some(Array.isArray)))) {
    rows = ids.map((r) => rowOf(r, vocab));
    const T = rows[0].length;
    if (rows.some((r) => r.length !== T)) {
      throw new InputError(`ids must be a rectangular array of integers: rows have lengths ${JSON.stringify(rows.map((r) => r.length))}`);
    }
  } else {
    throw new InputError(`ids must be a row of integer token ids or a batch of equal-length rows, got ${describe(ids)}`);
  }
  if (batch !== null && rows.length !== batch) {
    throw new InputError(`ids have batch size ${rows.length}, the session's state has batch size ${batch} (reset(batchSize) to change it)`);
  }
  return { rows, oneRow };
}

/** @param {unknown} x */
function isRow(x) {
  if (ArrayBuffer.isView(x)) return !(x instanceof DataView);
  return Array.isArray(x) && x.every((v) => typeof v === 'number' || typeof v === 'bigint');
}

/** @param {ArrayLike<number|bigint>} data @param {number} lo @param {number} hi */
function sliceOf(data, lo, hi) {
  return ArrayBuffer.isView(data) ? /** @type {any} */ (data).subarray(lo, hi) : Array.prototype.slice.call(data, lo, hi);
}

/**
 * @param {ArrayLike<number|bigint>} row @param {number} vocab
 * @returns {number[]}
 */
function rowOf(row, vocab) {
  const kind = row?.constructor?.name ?? '';
  if (FLOAT_ARRAYS.includes(kind)) throw new InputError(`ids must be integers, got a ${kind}`);
  const out = new Array(row.length);
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n)) throw new InputError(`ids must be integers, got ${describe(v)} at position ${i}`);
    if (n < 0 || n >= vocab) throw new InputError(`token ids must lie in [0, ${vocab}), got ${n} at position ${i}`);
    out[i] = n;
  }
  return out;
}

/** @param {unknown} x */
function describe(x) {
  if (x === null) return 'null';
  if (Array.isArray(x)) return `an array (${x.length} items)`;
  if (ArrayBuffer.isView(x)) return `a ${x.constructor.name}`;
  return typeof x === 'object' ? `an object (${x?.constructor?.name ?? 'Object'})` : `${typeof x} ${String(x).slice(0, 40)}`;
}

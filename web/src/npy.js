// The .npy format (version 1.0 written; 1.0-3.0 read), for little-endian float32/64, int64 and uint8 arrays.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];  // \x93NUMPY
/** @type {Record<string, {dtype: string, size: number}>} */
const DESCR = { '<f4': { dtype: 'float32', size: 4 }, '<i8': { dtype: 'int64', size: 8 }, '|u1': { dtype: 'uint8', size: 1 },
  '<f8': { dtype: 'float64', size: 8 } };
/** @type {Record<string, string>} */
const TO_DESCR = { float32: '<f4', int64: '<i8', uint8: '|u1' };

/** Thrown for a malformed or unsupported .npy; callers map it to their own error type. */
export class NpyFormatError extends Error {}

/**
 * @typedef {object} NpyHeader
 * @property {string} dtype          float32 | int64 | uint8
 * @property {number[]} shape
 * @property {number} dataOffset     bytes before the data
 * @property {number} dataBytes      bytes of data the header promises
 */

/**
 * Parse the header of a .npy (only the header: the data is not touched). The data must be exactly as
 * long as the shape says.
 * @param {Uint8Array} bytes  the whole .npy
 * @returns {NpyHeader}
 */
export function readNpyHeader(bytes) {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new NpyFormatError('not a .npy array (bad magic)');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen; let start;
  if (major === 1) { headerLen = view.getUint16(8, true); start = 10; } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyFormatError('truncated .npy header');
    headerLen = view.getUint32(8, true); start = 12;
  } else throw new NpyFormatError(`.npy version ${major} is not supported`);
  if (start + headerLen > bytes.length) throw new NpyFormatError('truncated .npy header');
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(start, start + headerLen));
  const m = /^\{\s*'descr':\s*'([^']*)',\s*'fortran_order':\s*(True|False),\s*'shape':\s*\(([^)]*)\),?\s*\}\s*$/.exec(text);
  if (!m) throw new NpyFormatError(`unreadable .npy header ${JSON.stringify(text.slice(0, 120))}`);
  const kind = DESCR[m[1]];
  if (!kind) throw new NpyFormatError(`.npy dtype ${m[1]} is not supported (float32, float64, int64 or uint8, little-endian)`);
  if (m[2] === 'True') throw new NpyFormatError('Fortran-ordered .npy arrays are not supported');
  const parts = m[3].split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (parts.some((s) => !/^\d+$/.test(s))) throw new NpyFormatError(`.npy shape (${m[3]}) is not a tuple of integers`);
  const shape = parts.map(Number);
  const dataBytes = shape.reduce((a, b) => a * b, 1) * kind.size;
  const dataOffset = start + headerLen;
  if (bytes.length - dataOffset !== dataBytes) {
    throw new NpyFormatError(`.npy of shape (${shape}) ${kind.dtype} needs ${dataBytes} data bytes, has ${bytes.length - dataOffset}`);
  }
  return { dtype: kind.dtype, shape, dataOffset, dataBytes };
}

/**
 * The data of a .npy whose header was read, copied into a fresh typed array.
 * @param {Uint8Array} bytes @param {NpyHeader} header
 * @returns {Float32Array | Float64Array | BigInt64Array | Uint8Array}
 */
export function readNpyData(bytes, header) {
  const copy = bytes.slice(header.dataOffset, header.dataOffset + header.dataBytes);
  if (header.dtype === 'float32') return new Float32Array(copy.buffer);
  if (header.dtype === 'int64') return new BigInt64Array(copy.buffer);
  if (header.dtype === 'float64') return new Float64Array(copy.buffer);
  return copy;
}

/**
 * A .npy (version 1.0, C order, header padded to 64 bytes as numpy writes it).
 * @param {'float32' | 'int64' | 'uint8'} dtype
 * @param {number[]} shape
 * @param {Float32Array | BigInt64Array | Uint8Array} data
 * @returns {Uint8Array}
 */
export function writeNpy(dtype, shape, data) {
  const descr = TO_DESCR[dtype];
  if (!descr) throw new NpyFormatError(`cannot write dtype ${dtype}`);
  if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new NpyFormatError(`data of ${data.length} values for shape (${shape})`);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header + ' '.repeat(total - 10 - header.length - 1) + '\n';
  const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(total + raw.length);
  out.set(MAGIC, 0); out[6] = 1; out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  out.set(raw, total);
  return out;
}

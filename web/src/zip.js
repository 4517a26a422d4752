// A minimal zip reader/writer for stored (uncompressed) members: the container of numpy's .npz files.

const LOCAL = 0x04034b50;
const CENTRAL = 0x02014b50;
const END = 0x06054b50;
const MAX32 = 0xffffffff;

/** Thrown for a malformed or unsupported archive; callers map it to their own error type. */
export class ZipFormatError extends Error {}

let crcTable = /** @type {Uint32Array | null} */ (null);

/**
 * CRC-32 (the zip polynomial) of bytes.
 * @param {Uint8Array} bytes
 * @returns {number}
 */
export function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * @typedef {object} ZipMember
 * @property {string} name
 * @property {number} offset  of the member's data in the archive
 * @property {number} size
 * @property {number} crc
 */

/**
 * Read the directory of a zip archive of stored members. Every member's local header is read and must
 * agree with its central-directory entry (name, method, sizes, CRC); a compressed or encrypted member,
 * a duplicate name or a member outside the archive is refused. No member data is read here.
 * @param {Uint8Array} bytes
 * @returns {Map<string, ZipMember>}
 */
export function readZipDirectory(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = bytes.length;
  let end = -1;
  for (let i = len - 22; i >= Math.max(0, len - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === END) { end = i; break; }
  }
  if (end < 0) throw new ZipFormatError('not a zip archive (no end-of-central-directory record)');
  const count = view.getUint16(end + 10, true);
  const cdSize = view.getUint32(end + 12, true);
  const cdOffset = view.getUint32(end + 16, true);
  if (count === 0xffff || cdOffset === MAX32) throw new ZipFormatError('zip64 archives are not supported');
  if (cdOffset + cdSize > end) throw new ZipFormatError('the central directory lies outside the archive');
  const decoder = new TextDecoder('utf-8', { fatal: true });
  /** @type {Map<string, ZipMember>} */
  const members = new Map();
  let p = cdOffset;
  for (let n = 0; n < count; n++) {
    if (p + 46 > end || view.getUint32(p, true) !== CENTRAL) throw new ZipFormatError(`central directory entry ${n} is malformed`);
    const flags = view.getUint16(p + 8, true);
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    let csize = view.getUint32(p + 20, true);
    let usize = view.getUint32(p + 24, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    let local = view.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen + commentLen > end) throw new ZipFormatError(`central directory entry ${n} is truncated`);
    let name;
    try { name = decoder.decode(bytes.subarray(p + 46, p + 46 + nameLen)); } catch { throw new ZipFormatError(`member ${n} has a name that is not UTF-8`); }
    const z64 = zip64Fields(view, p + 46 + nameLen, extraLen, [usize === MAX32, csize === MAX32, local === MAX32]);
    if (usize === MAX32) usize = z64.shift() ?? -1;
    if (csize === MAX32) csize = z64.shift() ?? -1;
    if (local === MAX32) local = z64.shift() ?? -1;
    if (flags & 1) throw new ZipFormatError(`member ${name} is encrypted`);
    if (method !== 0) throw new ZipFormatError(`member ${name} is compressed (method ${method}); only stored members are read (np.savez, not np.savez_compressed)`);
    if (usize !== csize || usize < 0) throw new ZipFormatError(`member ${name} has stored size ${csize} but size ${usize}`);
    if (members.has(name)) throw new ZipFormatError(`member ${name} appears twice`);
    const data = checkLocalHeader(bytes, view, decoder, local, { name, method, crc, size: usize, flags }, cdOffset);
    members.set(name, { name, offset: data, size: usize, crc });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return members;
}

/**
 * @param {Uint8Array} bytes @param {DataView} view @param {TextDecoder} decoder @param {number} at
 * @param {{name: string, method: number, crc: number, size: number, flags: number}} want
 * @param {number} limit  where member data must end (the central directory)
 * @returns {number} offset of the member's data
 */
function checkLocalHeader(bytes, view, decoder, at, want, limit) {
  if (at < 0 || at + 30 > limit || view.getUint32(at, true) !== LOCAL) throw new ZipFormatError(`member ${want.name} has no local header`);
  const flags = view.getUint16(at + 6, true);
  const method = view.getUint16(at + 8, true);
  const crc = view.getUint32(at + 14, true);
  let csize = view.getUint32(at + 18, true);
  let usize = view.getUint32(at + 22, true);
  const nameLen = view.getUint16(at + 26, true);
  const extraLen = view.getUint16(at + 28, true);
  if (at + 30 + nameLen + extraLen > limit) throw new ZipFormatError(`member ${want.name} has a truncated local header`);
  let name;
  try { name = decoder.decode(bytes.subarray(at + 30, at + 30 + nameLen)); } catch { name = '?'; }
  if (usize === MAX32 || csize === MAX32) {
    const z64 = zip64Fields(view, at + 30 + nameLen, extraLen, [true, true, false]);
    usize = z64[0] ?? -1; csize = z64[1] ?? -1;
  }
  const deferred = (flags & 8) !== 0 && crc === 0 && usize === 0 && csize === 0;  // sizes in a data descriptor
  if (name !== want.name || method !== want.method || (flags & 1) ||
      (!deferred && (crc !== want.crc || usize !== want.size || csize !== want.size))) {
    throw new ZipFormatError(`member ${want.name}: its local header (${name}, method ${method}, ${usize} bytes) ` +
      'does not match the central directory');
  }
  const data = at + 30 + nameLen + extraLen;
  if (data + want.size > limit) throw new ZipFormatError(`member ${want.name} runs past the end of the archive`);
  return data;
}

/**
 * The 64-bit values of a zip64 extra field, in the order zip stores them (only the flagged ones).
 * @param {DataView} view @param {number} at @param {number} len @param {boolean[]} present
 * @returns {number[]}
 */
function zip64Fields(view, at, len, present) {
  /** @type {number[]} */
  const out = [];
  for (let p = at; p + 4 <= at + len;) {
    const id = view.getUint16(p, true); const size = view.getUint16(p + 2, true);
    if (id === 1) {
      let q = p + 4;
      for (const flag of present) {
        if (!flag) continue;
        if (q + 8 > p + 4 + size) break;
        const v = view.getBigUint64(q, true);
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ZipFormatError('zip64 size too large');
        out.push(Number(v)); q += 8;
      }
      return out;
    }
    p += 4 + size;
  }
  return out;
}

/**
 * The data of a member, checked against its CRC-32 (a view into ``bytes``, not a copy).
 * @param {Uint8Array} bytes @param {ZipMember} member
 * @returns {Uint8Array}
 */
export function memberData(bytes, member) {
  const data = bytes.subarray(member.offset, member.offset + member.size);
  if (crc32(data) !== member.crc) throw new ZipFormatError(`member ${member.name} fails its CRC-32 check (corrupt)`);
  return data;
}

/**
 * A zip archive of stored members, in the given order.
 * @param {[string, Uint8Array][]} entries
 * @returns {Uint8Array}
 */
export function writeZip(entries) {
  const enc = new TextEncoder();
  const items = entries.map(([name, data]) => ({ name: enc.encode(name), data, crc: crc32(data), offset: 0 }));
  const localSize = items.reduce((n, it) => n + 30 + it.name.length + it.data.length, 0);
  const centralSize = items.reduce((n, it) => n + 46 + it.name.length, 0);
  const out = new Uint8Array(localSize + centralSize + 22);
  const view = new DataView(out.buffer);
  let p = 0;
  for (const it of items) {
    it.offset = p;
    view.setUint32(p, LOCAL, true); view.setUint16(p + 4, 20, true); view.setUint16(p + 6, 0, true);
    view.setUint16(p + 8, 0, true); view.setUint16(p + 10, 0, true); view.setUint16(p + 12, 0x21, true);
    view.setUint32(p + 14, it.crc, true); view.setUint32(p + 18, it.data.length, true);
    view.setUint32(p + 22, it.data.length, true); view.setUint16(p + 26, it.name.length, true);
    view.setUint16(p + 28, 0, true);
    out.set(it.name, p + 30); out.set(it.data, p + 30 + it.name.length);
    p += 30 + it.name.length + it.data.length;
  }
  const cd = p;
  for (const it of items) {
    view.setUint32(p, CENTRAL, true); view.setUint16(p + 4, 20, true); view.setUint16(p + 6, 20, true);
    view.setUint16(p + 8, 0, true); view.setUint16(p + 10, 0, true); view.setUint16(p + 12, 0, true);
    view.setUint16(p + 14, 0x21, true); view.setUint32(p + 16, it.crc, true);
    view.setUint32(p + 20, it.data.length, true); view.setUint32(p + 24, it.data.length, true);
    view.setUint16(p + 28, it.name.length, true); view.setUint32(p + 42, it.offset, true);
    out.set(it.name, p + 46);
    p += 46 + it.name.length;
  }
  view.setUint32(p, END, true); view.setUint16(p + 8, items.length, true); view.setUint16(p + 10, items.length, true);
  view.setUint32(p + 12, p - cd, true); view.setUint32(p + 16, cd, true);
  return out;
}

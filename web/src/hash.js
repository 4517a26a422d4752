// sha256 through WebCrypto (browsers in a secure context, and Node's global crypto).

/** Whether this platform can hash (WebCrypto's subtle API is present). */
export function canHash() {
  return typeof globalThis.crypto !== 'undefined' && typeof globalThis.crypto.subtle?.digest === 'function';
}

/**
 * Lowercase hex sha256 of bytes.
 * @param {Uint8Array} bytes
 * @returns {Promise<string>}
 */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', /** @type {BufferSource} */ (bytes)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

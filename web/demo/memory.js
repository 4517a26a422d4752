// The page's memory, where the browser reports it.

/**
 * performance.memory (Chromium) and, with ``full`` on a cross-origin-isolated page, measureUserAgentSpecificMemory
 * (slow: it waits for a garbage collection).
 * @param {boolean} [full]
 * @returns {Promise<{usedJSHeapSize?: number, totalJSHeapSize?: number, uaBytes?: number}>}
 */
export async function memorySample(full = false) {
  /** @type {{usedJSHeapSize?: number, totalJSHeapSize?: number, uaBytes?: number}} */
  const out = {};
  const mem = /** @type {any} */ (performance).memory;
  if (mem) { out.usedJSHeapSize = mem.usedJSHeapSize; out.totalJSHeapSize = mem.totalJSHeapSize; }
  const measure = /** @type {any} */ (performance).measureUserAgentSpecificMemory;
  if (full && globalThis.crossOriginIsolated && typeof measure === 'function') {
    try { out.uaBytes = (await measure.call(performance)).bytes; } catch { /* not allowed here */ }
  }
  return out;
}

/** @param {number} n */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}

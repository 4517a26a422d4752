// Where an artifact's files come from: a URL base (fetch) or any object with the same two methods.
import { ArtifactError, ManifestError } from './errors.js';
import { folderUrl, resolveUrl } from './paths.js';

/**
 * An artifact location. ``read`` is only ever called with paths checked by ``checkRelativePath``; an
 * implementation must also keep them inside its folder or base.
 * @typedef {object} ArtifactSource
 * @property {string} where                               for messages
 * @property {(rel: string) => Promise<Uint8Array>} read  throws ArtifactError when missing or outside
 * @property {(rel: string) => Promise<boolean>} [exists]
 */

/**
 * An artifact served over HTTP(S) (or any URL ``fetch`` reads): ``base`` is its folder (or its manifest.json).
 * Redirects are refused, so nothing is read from another origin.
 * @param {string | URL} base
 * @param {{fetch?: typeof fetch}} [options]
 * @returns {ArtifactSource}
 */
export function urlSource(base, options = {}) {
  const root = folderUrl(base);
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  return {
    where: root.href,
    async read(rel) {
      const url = resolveUrl(root, rel);
      let res;
      try {
        res = await doFetch(url, { redirect: 'error', credentials: 'same-origin' });
      } catch (err) {
        throw new ArtifactError(`cannot fetch ${url.href}: ${/** @type {Error} */ (err).message}`, { cause: err });
      }
      if (!res.ok) {
        const Err = rel === 'manifest.json' ? ManifestError : ArtifactError;
        throw new Err(`${url.href}: HTTP ${res.status} (${rel === 'manifest.json' ? 'an artifact holds manifest.json beside its model files' : 'missing'})`);
      }
      return new Uint8Array(await res.arrayBuffer());
    },
  };
}

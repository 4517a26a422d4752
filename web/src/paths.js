// Where an artifact's files may live: relative paths that stay inside the artifact folder or URL base.
import { ArtifactError } from './errors.js';

const SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:/;

/**
 * Check a path named by a manifest: relative, '/'-separated, no '..' (also percent-encoded), no absolute
 * path, drive letter, URL scheme, backslash or NUL. Returns the path's segments.
 * @param {unknown} rel
 * @param {string} what  what the path is, for the message
 * @returns {string[]}
 */
export function checkRelativePath(rel, what = 'file') {
  const bad = (/** @type {string} */ why) => new ArtifactError(`the manifest's ${what} path ${JSON.stringify(rel)} is refused: ${why}; ` +
    'every path must be relative and stay inside the artifact');
  if (typeof rel !== 'string' || rel.length === 0) throw bad('not a non-empty string');
  if (rel.includes('\0') || rel.includes('\\')) throw bad('it holds a NUL or a backslash');
  if (rel.startsWith('/')) throw bad('it is absolute');
  if (SCHEME.test(rel)) throw bad('it names a scheme, drive or other origin');
  if (rel.includes('?') || rel.includes('#')) throw bad('it holds a query or fragment');
  const segments = rel.split('/');
  for (const seg of segments) {
    let plain;
    try { plain = decodeURIComponent(seg); } catch { throw bad('it holds a malformed percent escape'); }
    if (seg === '' || plain === '..' || plain === '.' || plain.includes('/') || plain.includes('\\')) {
      throw bad(seg === '' ? 'it has an empty segment' : `it has the segment ${JSON.stringify(seg)}`);
    }
  }
  return segments;
}

/**
 * Resolve a checked relative path against a URL base (a folder URL); refuses a result on another origin
 * or outside the base's path.
 * @param {string | URL} base
 * @param {string} rel
 * @param {string} [what]
 * @returns {URL}
 */
export function resolveUrl(base, rel, what = 'file') {
  checkRelativePath(rel, what);
  const root = folderUrl(base);
  const url = new URL(rel, root);
  if (url.origin !== root.origin || !url.pathname.startsWith(root.pathname) || url.search || url.hash) {
    throw new ArtifactError(`the manifest's ${what} path ${JSON.stringify(rel)} resolves to ${url.href}, ` +
      `outside the artifact base ${root.href}`);
  }
  return url;
}

/**
 * The artifact base as a folder URL (with a trailing slash; a trailing 'manifest.json' is dropped).
 * @param {string | URL} base
 * @returns {URL}
 */
export function folderUrl(base) {
  const fallback = typeof location !== 'undefined' ? location.href : undefined;
  let url;
  try { url = new URL(String(base), fallback); } catch (err) {
    throw new ArtifactError(`artifact location ${JSON.stringify(String(base))} is not a URL`, { cause: err });
  }
  url.search = ''; url.hash = '';
  if (url.pathname.endsWith('/manifest.json')) url.pathname = url.pathname.slice(0, -'manifest.json'.length);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

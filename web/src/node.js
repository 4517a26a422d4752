// Node.js helpers: open an artifact folder from disk, save and load state files atomically.
import { randomBytes } from 'node:crypto';
import { open as openFile, readFile, realpath, rename, stat, unlink } from 'node:fs/promises';
import { dirname, basename, join, resolve, sep } from 'node:path';
import { ArtifactError, ManifestError, StateError } from './errors.js';
import { checkRelativePath } from './paths.js';
import { InfiniSession } from './session.js';

export * from './index.js';

/**
 * An artifact folder on disk; every path stays inside it (also through symbolic links).
 * @param {string} dir
 * @returns {import('./source.js').ArtifactSource}
 */
export function folderSource(dir) {
  const root = resolve(dir);
  return {
    where: root + sep,
    async read(rel) {
      checkRelativePath(rel);
      let realRoot;
      try { realRoot = await realpath(root); } catch { throw new ArtifactError(`artifact folder ${root} does not exist`); }
      let real;
      try { real = await realpath(join(root, ...rel.split('/'))); } catch {
        const Err = rel === 'manifest.json' ? ManifestError : ArtifactError;
        throw new Err(`${join(root, rel)} is missing${rel === 'manifest.json' ? '; an artifact folder holds manifest.json beside its model files' : ''}`);
      }
      if (!real.startsWith(realRoot + sep)) throw new ArtifactError(`${rel} resolves to ${real}, outside the artifact folder ${realRoot}`);
      return new Uint8Array(await readFile(real));
    },
  };
}

/**
 * Open an artifact folder (or an http(s) URL).
 * @param {string | URL} location
 * @param {import('./artifact.js').OpenOptions & {batchSize?: number}} options
 * @returns {Promise<InfiniSession>}
 */
export function openArtifact(location, options) {
  const isUrl = location instanceof URL || /^https?:\/\//.test(String(location));
  return InfiniSession.open(isUrl ? location : folderSource(String(location)), options);
}

/**
 * Write the session's state file atomically (temp file beside it, fsync, rename).
 * @param {InfiniSession} session @param {string} path
 * @returns {Promise<string>}
 */
export async function saveState(session, path) {
  const bytes = await session.exportState();
  const target = resolve(path);
  const tmp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await openFile(tmp, 'wx');
    try { await fh.writeFile(bytes); await fh.sync(); } finally { await fh.close(); }
    await rename(tmp, target);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  return target;
}

/**
 * Load a state file written by ``saveState`` or the Python runtime's ``save_state`` for the same model.
 * @param {InfiniSession} session @param {string} path
 * @param {{maxBytes?: number}} [options]  refuse larger files before reading them
 */
export async function loadState(session, path, options = {}) {
  const maxBytes = options.maxBytes ?? 64 * session.stateBytes / session.batchSize * session.manifest.maxBatch + (1 << 20);
  let info;
  try { info = await stat(path); } catch { throw new StateError(`state file ${path} does not exist`); }
  if (!info.isFile() || info.size > maxBytes) throw new StateError(`${path} is not a state file of this model (${info.size} bytes)`);
  await session.importState(new Uint8Array(await readFile(path)), path);
}

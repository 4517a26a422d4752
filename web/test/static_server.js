// A static file server on 127.0.0.1 (a free port) for the URL and browser tests.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json',
  '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.css': 'text/css' };

/**
 * Serve ``root`` until ``close()``; returns its base URL. ``isolated`` sends the COOP/COEP headers that make
 * a page cross-origin isolated (WebAssembly threads).
 * @param {string} root
 * @param {{isolated?: boolean}} [options]
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function serve(root, options = {}) {
  const extra = options.isolated ? { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' } : {};
  const server = createServer(async (req, res) => {
    const path = normalize(join(root, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)));
    let file = path;
    try {
      if (!(path + sep).startsWith(root + sep) && path !== root) throw new Error('outside');
      if ((await stat(file)).isDirectory()) file = join(file, 'index.html');
      const info = await stat(file);
      res.writeHead(200, { 'content-type': TYPES[/** @type {keyof TYPES} */ (extname(file))] ?? 'application/octet-stream',
        'content-length': info.size, ...extra });
      createReadStream(file).pipe(res);
    } catch {
      res.writeHead(404); res.end();
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(undefined)));
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((ok) => { server.closeAllConnections(); server.close(() => ok()); }) };
}

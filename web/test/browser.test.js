// The demo page in headless Chromium: a 32K-token passkey prompt answered, and a screenshot of it.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inflateSync } from 'node:zlib';
import { ROOT, goldens } from './helpers.js';
import { serve } from './static_server.js';
import { findChromium, launch } from '../tools/browser.js';

const chromium = findChromium();
const artifact = goldens().models.small.artifact;
const LENGTH = process.env.INFINI_BROWSER_LENGTH ?? '32K';

describe('demo page in headless Chromium', { skip: chromium ? false : 'no Chromium found (install it: apt-get install -y chromium); browser test skipped' }, () => {
  /** @type {any} */ let browser;
  /** @type {{url: string, close: () => Promise<void>}} */ let server;
  before(async () => {
    assert.ok(existsSync(join(artifact, 'manifest.json')), `no artifact at ${artifact}`);
    server = await serve(ROOT);
    browser = await launch(/** @type {string} */ (chromium));
  });
  after(async () => { await browser?.close(); await server?.close(); });

  it(`answers a ${LENGTH} passkey prompt and renders the result`, { timeout: 20 * 60 * 1000 }, async () => {
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 900 });
    const errors = [];
    page.on('pageerror', (/** @type {Error} */ e) => errors.push(String(e)));
    const rel = artifact.startsWith(ROOT) ? artifact.slice(ROOT.length + 1) : null;
    assert.ok(rel, `the artifact ${artifact} must lie inside the repository to be served`);
    const key = '48213';
    await page.goto(`${server.url}web/demo/?length=${LENGTH}&depth=0.5&key=${key}&run=1&artifact=${encodeURIComponent(`../../${rel}/`)}`);
    await page.waitForFunction('window.demo && (window.demo.result || window.demo.error)', { timeout: 19 * 60 * 1000, polling: 500 });
    const demo = await page.evaluate('window.demo');
    assert.equal(demo.error, null, demo.error);
    assert.equal(demo.result.key, key);
    assert.equal(demo.result.correct, true, `answer ${JSON.stringify(demo.result.answer)}`);
    assert.equal(demo.result.stateBytes, 50688);
    const shot = await page.screenshot({ type: 'png' });
    if (process.env.INFINI_SCREENSHOT) writeFileSync(process.env.INFINI_SCREENSHOT, shot);
    const png = pngInfo(Buffer.from(shot));
    assert.deepEqual([png.width, png.height], [1000, 900]);
    assert.ok(png.distinctRows > 50, `the screenshot looks blank (${png.distinctRows} distinct rows)`);
    assert.deepEqual(errors, []);
    // the free-text box: greedy, as the Python runtime continues the same text
    const text = goldens().text;
    await page.$eval('#text', (/** @type {any} */ el, /** @type {string} */ v) => { el.value = v; }, text.prompt);
    await page.$eval('#count', (/** @type {any} */ el, /** @type {number} */ v) => { el.value = String(v); }, text.tokens.length);
    await page.click('#generate');
    await page.waitForFunction('window.demo.generated !== null', { timeout: 120000, polling: 200 });
    const generated = await page.evaluate('window.demo.generated');
    assert.equal(generated, Buffer.from(text.tokens).toString('utf8'));
    console.log(`# ${LENGTH} passkey in Chromium: ${JSON.stringify(demo.result.answer)}, ${Math.round(demo.result.tokensPerSecond)} tok/s`);
  });

  it('with a tokenizer, the free-text box streams generateTextIter pieces: the Python runtime\'s text', { timeout: 10 * 60 * 1000 }, async () => {
    const { artifact: textArtifact, cases } = goldens().tokenizer.text.small;
    const rel = textArtifact.startsWith(ROOT) ? textArtifact.slice(ROOT.length + 1) : null;
    assert.ok(rel, `the artifact ${textArtifact} must lie inside the repository to be served`);
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 900 });
    const errors = [];
    page.on('pageerror', (/** @type {Error} */ e) => errors.push(String(e)));
    await page.goto(`${server.url}web/demo/?artifact=${encodeURIComponent(`../../${rel}/`)}`);
    await page.waitForFunction('window.demo && (window.demo.ready || window.demo.error)', { timeout: 5 * 60 * 1000, polling: 200 });
    assert.equal(await page.evaluate('window.demo.error'), null);
    assert.match(await page.$eval('#model', (/** @type {any} */ el) => el.textContent), /tokenizer of 256 tokens/);
    for (const c of cases) {
      await page.$eval('#text', (/** @type {any} */ el, /** @type {string} */ v) => { el.value = v; }, c.prompt);
      await page.$eval('#count', (/** @type {any} */ el, /** @type {number} */ v) => { el.value = String(v); }, c.max_new_tokens);
      await page.$eval('#stop', (/** @type {any} */ el, /** @type {string} */ v) => { el.value = v; }, c.stop[0] ?? '');
      await page.click('#generate');
      await page.waitForFunction('window.demo.generated !== null', { timeout: 120000, polling: 100 });
      const { generated, pieces } = /** @type {any} */ (await page.evaluate('({generated: window.demo.generated, pieces: window.demo.pieces})'));
      assert.equal(generated, c.text);
      assert.ok(pieces > 1, `the text came in ${pieces} piece(s)`);
      assert.equal(await page.$eval('#generated', (/** @type {any} */ el) => el.textContent), c.text);
    }
    const shot = await page.screenshot({ type: 'png' });
    if (process.env.INFINI_SCREENSHOT_TEXT) writeFileSync(process.env.INFINI_SCREENSHOT_TEXT, shot);
    assert.ok(pngInfo(Buffer.from(shot)).distinctRows > 50);
    assert.deepEqual(errors, []);
  });
});

/**
 * Width, height and how many distinct pixel rows an 8-bit RGB(A) PNG has.
 * @param {Buffer} buf
 */
function pngInfo(buf) {
  assert.equal(buf.subarray(1, 4).toString('latin1'), 'PNG');
  const width = buf.readUInt32BE(16); const height = buf.readUInt32BE(20);
  const depth = buf[24]; const color = buf[25];
  const chunks = [];
  for (let p = 8; p < buf.length;) {
    const len = buf.readUInt32BE(p); const type = buf.subarray(p + 4, p + 8).toString('latin1');
    if (type === 'IDAT') chunks.push(buf.subarray(p + 8, p + 8 + len));
    p += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(chunks));
  const bpp = color === 6 ? 4 : 3;
  assert.equal(depth, 8);
  const stride = width * bpp + 1;
  const rows = new Set();
  // rows are filtered; unfilter (types 0-4) to compare real pixels
  let prev = Buffer.alloc(width * bpp);
  for (let y = 0; y < height; y++) {
    const f = raw[y * stride]; const line = Buffer.from(raw.subarray(y * stride + 1, (y + 1) * stride));
    for (let i = 0; i < line.length; i++) {
      const a = i >= bpp ? line[i - bpp] : 0; const b = prev[i]; const c = i >= bpp ? prev[i - bpp] : 0;
      const pred = f === 1 ? a : f === 2 ? b : f === 3 ? (a + b) >> 1 : f === 4 ? paeth(a, b, c) : 0;
      line[i] = (line[i] + pred) & 0xff;
    }
    rows.add(line.toString('base64'));
    prev = line;
  }
  return { width, height, distinctRows: rows.size };
}

/** @param {number} a @param {number} b @param {number} c */
function paeth(a, b, c) {
  const p = a + b - c; const pa = Math.abs(p - a); const pb = Math.abs(p - b); const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

// The demo page in headless Chromium: a 32K-token passkey prompt answered by the passkey model, the free-text box's
// default text continued by the text model as the Python runtime continues it, and screenshots of both.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inflateSync } from 'node:zlib';
import { ROOT, goldens } from './helpers.js';
import { serve } from './static_server.js';
import { findChromium, launch } from '../tools/browser.js';

const chromium = findChromium();
const LENGTH = process.env.INFINI_BROWSER_LENGTH ?? '32K';

/** An artifact folder as the page's ?artifact= / ?text= value (relative to web/demo/). */
function pageRelative(/** @type {string} */ artifact) {
  assert.ok(existsSync(join(artifact, 'manifest.json')), `no artifact at ${artifact}`);
  assert.ok(artifact.startsWith(ROOT + '/'), `the artifact ${artifact} must lie inside the repository to be served`);
  return encodeURIComponent(`../../${artifact.slice(ROOT.length + 1)}/`);
}

describe('demo page in headless Chromium', { skip: chromium ? false : 'no Chromium found (install it: apt-get install -y chromium); browser test skipped' }, () => {
  /** @type {any} */ let browser;
  /** @type {{url: string, close: () => Promise<void>}} */ let server;
  /** @type {string} */ let models;  // the query naming both artifacts the goldens were made on
  before(async () => {
    const index = goldens();
    models = `artifact=${pageRelative(index.models.small.artifact)}&text=${pageRelative(index.demo_text.artifact)}`;
    server = await serve(ROOT);
    browser = await launch(/** @type {string} */ (chromium));
  });
  after(async () => { await browser?.close(); await server?.close(); });

  /** A new page at the demo with ``query``, its uncaught errors collected. */
  async function openDemo(/** @type {string} */ query) {
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 900 });
    /** @type {string[]} */ const errors = [];
    page.on('pageerror', (/** @type {Error} */ e) => errors.push(String(e)));
    await page.goto(`${server.url}web/demo/?${query}`);
    return { page, errors };
  }
  const textOf = (/** @type {any} */ page, /** @type {string} */ sel) => page.$eval(sel, (/** @type {any} */ el) => el.textContent);

  it(`the passkey model answers a ${LENGTH} passkey prompt and the page renders the result`, { timeout: 20 * 60 * 1000 }, async () => {
    const key = '48213';
    const { page, errors } = await openDemo(`length=${LENGTH}&depth=0.5&key=${key}&run=1&${models}`);
    await page.waitForFunction('window.demo && (window.demo.result || window.demo.error)', { timeout: 19 * 60 * 1000, polling: 500 });
    const demo = await page.evaluate('window.demo');
    assert.equal(demo.error, null, demo.error);
    assert.equal(demo.result.key, key);
    assert.equal(demo.result.correct, true, `answer ${JSON.stringify(demo.result.answer)}`);
    assert.equal(demo.result.stateBytes, 50688);
    assert.match(await textOf(page, '#passkey-model'), new RegExp(`^passkey model: .*fingerprint ${goldens().models.small.fingerprint.slice(0, 12)}`));
    const shot = await page.screenshot({ type: 'png' });
    if (process.env.INFINI_SCREENSHOT) writeFileSync(process.env.INFINI_SCREENSHOT, shot);
    const png = pngInfo(Buffer.from(shot));
    assert.deepEqual([png.width, png.height], [1000, 900]);
    assert.ok(png.distinctRows > 50, `the screenshot looks blank (${png.distinctRows} distinct rows)`);
    assert.deepEqual(errors, []);
    console.log(`# ${LENGTH} passkey in Chromium: ${JSON.stringify(demo.result.answer)}, ${Math.round(demo.result.tokensPerSecond)} tok/s`);
  });

  it('the free-text box streams the text model\'s continuation of its default text: the Python runtime\'s greedy text', { timeout: 5 * 60 * 1000 }, async () => {
    const golden = goldens().demo_text;
    const [free, stopped] = golden.cases;
    const { page, errors } = await openDemo(models);
    await page.waitForFunction('window.demo && (window.demo.textReady || window.demo.textError)', { timeout: 4 * 60 * 1000, polling: 100 });
    assert.equal(await page.evaluate('window.demo.textError'), null);
    assert.match(await textOf(page, '#text-model'), new RegExp(`^text model: .*fingerprint ${golden.fingerprint.slice(0, 12)}`));
    // as a visitor finds it: the default text and length, greedy, no stop string
    assert.equal(await page.$eval('#text', (/** @type {any} */ el) => el.value), free.prompt,
      `the free-text box's default text is not the first ${golden.lines} lines of ${golden.file} (web/tools/make_goldens.py)`);
    assert.equal(Number(await page.$eval('#count', (/** @type {any} */ el) => el.value)), free.max_new_tokens);
    for (const c of [free, stopped]) {
      await page.$eval('#stop', (/** @type {any} */ el, /** @type {string} */ v) => { el.value = v; }, (c.stop[0] ?? '').replaceAll('\n', '\\n'));
      await page.click('#generate');
      await page.waitForFunction('window.demo.generated !== null || window.demo.generateError', { timeout: 2 * 60 * 1000, polling: 100 });
      const { generated, pieces, generateError } = /** @type {any} */ (await page.evaluate(
        '({generated: window.demo.generated, pieces: window.demo.pieces, generateError: window.demo.generateError})'));
      assert.equal(generateError, null);
      assert.equal(generated, c.text, `stop ${JSON.stringify(c.stop)}`);
      assert.equal(await textOf(page, '#generated'), c.text);
      if (c === free) {
        assert.ok(pieces > 1, `the text came in ${pieces} piece(s)`);
        const shot = await page.screenshot({ type: 'png' });
        if (process.env.INFINI_SCREENSHOT_TEXT) writeFileSync(process.env.INFINI_SCREENSHOT_TEXT, shot);
        assert.ok(pngInfo(Buffer.from(shot)).distinctRows > 50);
      }
    }
    assert.ok(stopped.text.length < free.text.length, 'the stop string did not stop the text');
    assert.deepEqual(errors, []);
  });

  it('without the text model\'s artifact the page says so and the passkey part still loads', { timeout: 5 * 60 * 1000 }, async () => {
    const { page, errors } = await openDemo(models.replace(/&text=[^&]*/, `&text=${encodeURIComponent('../../out/no-such-artifact/')}`));
    await page.waitForFunction('window.demo && (window.demo.ready || window.demo.error) && (window.demo.textReady || window.demo.textError)', { timeout: 4 * 60 * 1000, polling: 100 });
    assert.equal(await page.evaluate('window.demo.error'), null);
    assert.equal(await page.$eval('#run', (/** @type {any} */ el) => el.disabled), false);
    assert.equal(await page.$eval('#generate', (/** @type {any} */ el) => el.disabled), true);
    assert.match(await textOf(page, '#text-model'), /^no text model: \/out\/no-such-artifact\/ did not load\. .*HTTP 404/);
    assert.match(await textOf(page, '#passkey-model'), /^passkey model: /);
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

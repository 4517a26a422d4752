#!/usr/bin/env node
// A screenshot of the whole demo page in headless Chromium, as a visitor sees it after a passkey run and a
// free-text generation with the page's defaults (its default artifacts: `make web` exports them).
//
//   node web/tools/screenshot_demo.mjs [--out docs/web/demo.png] [--length 32K]
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { findChromium, launch } from './browser.js';
import { serve } from '../test/static_server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: args } = parseArgs({ options: {
  out: { type: 'string', default: join(ROOT, 'docs', 'web', 'demo.png') },
  length: { type: 'string', default: '32K' },
} });

const chromium = findChromium();
if (!chromium) throw new Error('no Chromium found (apt-get install -y chromium, or set CHROMIUM)');
const server = await serve(ROOT);
const browser = await launch(chromium);
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 900 });
  await page.goto(`${server.url}web/demo/?length=${encodeURIComponent(args.length)}&depth=0.5&key=48213&run=1`);
  await page.waitForFunction('window.demo && (window.demo.result || window.demo.error) && (window.demo.textReady || window.demo.textError)',
    { timeout: 60 * 60 * 1000, polling: 500 });
  const loaded = /** @type {any} */ (await page.evaluate('window.demo'));
  if (loaded.error) throw new Error(`the passkey part failed: ${loaded.error}`);
  if (loaded.textError) throw new Error(`the text model did not load: ${loaded.textError}`);
  await page.click('#generate');
  await page.waitForFunction('window.demo.generated !== null || window.demo.generateError', { timeout: 10 * 60 * 1000, polling: 200 });
  const demo = /** @type {any} */ (await page.evaluate('window.demo'));
  if (demo.generateError) throw new Error(`generation failed: ${demo.generateError}`);
  writeFileSync(args.out, await page.screenshot({ type: 'png', fullPage: true }));
  console.log(`${args.out}: passkey ${JSON.stringify(demo.result.answer)} (${demo.result.correct ? 'correct' : 'wrong'}), ` +
    `${demo.pieces} text pieces`);
} finally {
  await browser.close();
  await server.close();
}

// Runs the demo page's passkey prompt in headless Chromium and watches the page's memory while it streams.
import { readFileSync, readdirSync } from 'node:fs';
import { launch } from './browser.js';

/**
 * Resident memory (bytes) of the browser's renderer processes, from /proc (Linux; 0 elsewhere).
 * @param {number} browserPid
 */
export function rendererRss(browserPid) {
  let total = 0;
  let dirs = [];
  try { dirs = readdirSync('/proc').filter((d) => /^\d+$/.test(d)); } catch { return 0; }
  for (const pid of dirs) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      if (!cmd.includes('--type=renderer')) continue;
      const status = readFileSync(`/proc/${pid}/status`, 'latin1');
      const ppidChain = Number(/PPid:\s+(\d+)/.exec(status)?.[1]);
      if (!descendsFrom(ppidChain, browserPid)) continue;
      total += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    } catch { /* the process ended */ }
  }
  return total;
}

/** @param {number} pid @param {number} ancestor */
function descendsFrom(pid, ancestor) {
  for (let i = 0; i < 10 && pid > 1; i++) {
    if (pid === ancestor) return true;
    try { pid = Number(/PPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))?.[1]); } catch { return false; }
  }
  return pid === ancestor;
}

/**
 * Open the demo at ``pageUrl`` (with ?length=...&run=1 ...) and wait for its answer, sampling the
 * renderer's resident memory every second.
 * @param {string} chromium  browser binary
 * @param {string} pageUrl
 * @param {{timeoutMs?: number}} [options]
 */
export async function runDemo(chromium, pageUrl, options = {}) {
  const browser = await launch(chromium);
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 900 });
    const pid = browser.process()?.pid ?? 0;
    /** @type {{t: number, progress: number, rss: number}[]} */
    const rss = [];
    const t0 = Date.now();
    const timer = setInterval(async () => {
      try {
        const progress = Number(await page.$eval('#progress', (/** @type {any} */ el) => el.value));
        rss.push({ t: (Date.now() - t0) / 1000, progress, rss: rendererRss(pid) });
      } catch { /* navigating */ }
    }, 1000);
    await page.goto(pageUrl);
    await page.waitForFunction('window.demo && (window.demo.result || window.demo.error)',
      { timeout: options.timeoutMs ?? 60 * 60 * 1000, polling: 1000 });
    clearInterval(timer);
    const demo = await page.evaluate('window.demo');
    return { demo, rss };
  } finally {
    await browser.close();
  }
}

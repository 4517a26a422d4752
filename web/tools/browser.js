// Headless Chromium through puppeteer-core, using the system's browser (no browser download).
import { existsSync } from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'];

/** The Chromium binary: $CHROMIUM, or a system one; null when there is none. */
export function findChromium() {
  const env = process.env.CHROMIUM;
  if (env) return existsSync(env) ? env : null;
  return CANDIDATES.find((p) => existsSync(p)) ?? null;
}

/**
 * Launch headless Chromium with precise memory numbers (performance.memory).
 * @param {string} executablePath
 */
export async function launch(executablePath) {
  const { default: puppeteer } = await import('puppeteer-core');
  return puppeteer.launch({
    executablePath,
    headless: true,
    protocolTimeout: 2 * 60 * 60 * 1000,  // waiting for a long prompt is one protocol call
    args: ['--no-sandbox', '--enable-precise-memory-info', '--disable-gpu', '--disable-dev-shm-usage',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding'],
  });
}

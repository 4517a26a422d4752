#!/usr/bin/env node
// Tokens/s of one artifact, side by side: the Python runtime, this runtime on onnxruntime-node and on
// onnxruntime-web (WebAssembly) in Node, and the demo page in headless Chromium, all streaming the same
// passkey prompt (and checking its answer).
//
//   node web/bench.mjs [--artifact out/web-onnx] [--length 32K] [--rounds 1] [--python .venv/bin/python]
//   node web/bench.mjs --browser-only --length 128K     # the demo page alone, with its memory over time
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openArtifact } from './src/node.js';
import { writeNpy } from './src/npy.js';
import { ANSWER_LEN, PasskeyPrompt, isCorrect } from './src/passkey.js';
import { findChromium } from './tools/browser.js';
import { runDemo } from './tools/chromium_passkey.js';
import { serve } from './test/static_server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const LENGTHS = { '4K': 4096, '32K': 32768, '128K': 131072, '256K': 262144, '1M': 1048576 };
const { values: args } = parseArgs({ options: {
  artifact: { type: 'string', default: join(ROOT, 'out', 'web-onnx') },
  length: { type: 'string', default: '32K' },
  rounds: { type: 'string', default: '1' },
  python: { type: 'string', default: process.env.PYTHON ?? (existsSync(join(ROOT, '.venv', 'bin', 'python')) ? join(ROOT, '.venv', 'bin', 'python') : 'python3') },
  'browser-only': { type: 'boolean', default: false },
} });
const length = LENGTHS[/** @type {keyof LENGTHS} */ (args.length)] ?? Number(args.length);
const key = '48213';
const prompt = new PasskeyPrompt(length, 0.5, key);
const artifact = resolve(args.artifact);
const CHUNK = 8192;

/** Stream the prompt through a JS session; greedy answer. @param {any} ort */
async function viaJs(ort) {
  const s = await openArtifact(artifact, { ort });
  await s.stream(prompt.chunk(0, s.segmentLen));  // warm-up
  await s.reset();
  const t0 = performance.now();
  let last;
  for (let lo = 0; lo < length; lo += CHUNK) last = await s.stream(prompt.chunk(lo, Math.min(length, lo + CHUNK)));
  const seconds = (performance.now() - t0) / 1000;
  const answer = [];
  let logits = last.data;
  for (let i = 0; i < ANSWER_LEN; i++) {
    let best = 0;
    for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
    answer.push(best);
    if (i + 1 < ANSWER_LEN) logits = (await s.stream([best])).data;
  }
  return { tokPerS: length / seconds, answer: Buffer.from(answer).toString('latin1') };
}

function viaPython() {
  const dir = mkdtempSync(join(tmpdir(), 'infini-bench-'));
  const ids = new BigInt64Array(length);
  prompt.chunk(0, length).forEach((v, i) => { ids[i] = BigInt(v); });
  writeFileSync(join(dir, 'ids.npy'), writeNpy('int64', [1, length], ids));
  const script = `
import json, sys, time, numpy as np
sys.path.insert(0, ${JSON.stringify(ROOT)})
from runtime import InfiniSession
s = InfiniSession.open(${JSON.stringify(artifact)})
ids = np.load(${JSON.stringify(join(dir, 'ids.npy'))})
s.stream(ids[:, :s.segment_len]); s.reset()
t0 = time.perf_counter()
for lo in range(0, ids.shape[1], ${CHUNK}):
    last = s.stream(ids[:, lo:lo + ${CHUNK}])
seconds = time.perf_counter() - t0
out = []
for i in range(${ANSWER_LEN}):
    out.append(int(last[0].argmax()))
    if i + 1 < ${ANSWER_LEN}:
        last = s.stream(np.array([[out[-1]]]))
print(json.dumps({"tokPerS": ids.shape[1] / seconds, "answer": bytes(out).decode("latin1")}))`;
  return JSON.parse(execFileSync(args.python, ['-c', script], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n').pop());
}

async function viaChromium(isolated = false) {
  const chromium = findChromium();
  if (!chromium) return null;
  const server = await serve(ROOT, { isolated });
  try {
    const rel = relative(ROOT, artifact);
    const url = `${server.url}web/demo/?length=${args.length}&depth=0.5&key=${key}&run=1&threads=${isolated ? 2 : 1}` +
      `&artifact=${encodeURIComponent(`../../${rel}/`)}`;
    const { demo, rss } = await runDemo(chromium, url);
    if (demo.error) throw new Error(demo.error);
    return { tokPerS: demo.result.tokensPerSecond, answer: demo.result.answer, memory: demo.result.memory, rss, threads: demo.threads };
  } finally {
    await server.close();
  }
}

const mb = (/** @type {number} */ n) => `${(n / 2 ** 20).toFixed(1)} MB`;
const rows = [];
if (args['browser-only']) {
  const r = await viaChromium();
  if (!r) throw new Error('no Chromium found');
  const heap = r.memory.map((/** @type {any} */ m) => m.usedJSHeapSize).filter(Boolean);
  const q = (/** @type {number} */ f) => r.rss.find((x) => x.progress >= f) ?? r.rss[r.rss.length - 1];
  console.log(`${length.toLocaleString()}-token passkey prompt in headless Chromium: answer ${JSON.stringify(r.answer)} ` +
    `(${isCorrect(r.answer, key) ? 'correct' : 'WRONG'}), ${Math.round(r.tokPerS)} tok/s`);
  console.log(`JS heap: first ${mb(heap[0])}, peak ${mb(Math.max(...heap))}, last ${mb(heap[heap.length - 1])} (${heap.length} samples)`);
  console.log(`renderer RSS at 10% / 50% / 90% / end of the prompt: ${[0.1, 0.5, 0.9].map((f) => mb(q(f).rss)).join(' / ')} / ${mb(r.rss[r.rss.length - 1].rss)}`);
} else {
  for (let round = 0; round < Number(args.rounds); round++) {
    rows.push(['Python runtime (onnxruntime)', viaPython()]);
    rows.push(['JS, Node, onnxruntime-node', await viaJs(await import('onnxruntime-node'))]);
    const web = await import('onnxruntime-web');
    web.env.wasm.numThreads = 1;
    rows.push(['JS, Node, onnxruntime-web (wasm)', await viaJs(web)]);
    const c = await viaChromium();
    rows.push(['JS, headless Chromium (wasm)', c ?? { tokPerS: NaN, answer: 'no Chromium' }]);
    const ci = await viaChromium(true);
    rows.push(['JS, headless Chromium (wasm, 2 threads)', ci ?? { tokPerS: NaN, answer: 'no Chromium' }]);
  }
  const py = rows.filter(([n]) => n.startsWith('Python')).map(([, r]) => r.tokPerS);
  const pyMean = py.reduce((a, b) => a + b, 0) / py.length;
  console.log(`${length.toLocaleString()}-token passkey prompt (key ${key}), ${artifact}`);
  console.log(`${'runtime'.padEnd(40)} ${'tok/s'.padStart(8)}  vs Python  answer`);
  for (const [name, r] of rows) {
    console.log(`${name.padEnd(40)} ${Math.round(r.tokPerS).toString().padStart(8)}  ${(r.tokPerS / pyMean).toFixed(2).padStart(8)}x  ` +
      `${JSON.stringify(r.answer)} ${isCorrect(r.answer, key) ? 'correct' : 'wrong'}`);
  }
}
process.exit(0);

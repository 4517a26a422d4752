// The demo page: a passkey prompt of a chosen length streamed through the bundled passkey model, and free text
// continued by the bundled text model (Python code). Each part has its own artifact; either may fail to load alone.
import * as ort from '../node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import * as tokenizers from '../node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs';
import { InfiniSession } from '../src/index.js';
import { ANSWER_LEN, PasskeyPrompt, isCorrect } from '../src/passkey.js';
import { memorySample, formatBytes } from './memory.js';
import { describeModel, missingModel, modelParts } from './models.js';

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const params = new URLSearchParams(location.search);
const PARTS = modelParts(params, location.href);
const LENGTHS = { '4K': 4096, '32K': 32768, '128K': 131072, '256K': 262144, '1M': 1048576 };

/** What the page did, for people and for the browser test. */
const demo = /** @type {any} */ ({ ready: false, running: false, result: null, error: null,
  textReady: false, textError: null, generated: null, generateError: null, pieces: 0 });
/** @type {any} */ (window).demo = demo;

// one WebAssembly thread unless ?threads=N on a cross-origin-isolated page (make web serves it so): on a
// small shared machine extra threads were slower
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.max(1, Math.min(8, Number(params.get('threads')) || 1)) : 1;
demo.threads = ort.env.wasm.numThreads;
/** @type {InfiniSession} the passkey model */
let session;
/** @type {InfiniSession} the text model */
let textSession;

function randomKey() { return String(10000 + Math.floor(Math.random() * 90000)); }
const yieldToPage = () => new Promise((ok) => setTimeout(ok, 0));

async function init() {
  for (const [name, value] of [['length', params.get('length')], ['depth', params.get('depth')]]) {
    if (value !== null) $(name).value = value;
  }
  $('key').value = params.get('key') ?? randomKey();
  await Promise.all([openPasskey(), openText()]);
  if (demo.ready && params.get('run') === '1') await runPasskey();
}

async function openPasskey() {
  try {
    session = await InfiniSession.open(PARTS.passkey.url, { ort, tokenizers });
  } catch (err) {
    demo.error = String(err);
    $('status').textContent = 'error: the passkey model did not load';
    showMissing('passkey-model', PARTS.passkey, err);
    return;
  }
  $('passkey-model').textContent = describeModel(PARTS.passkey, session);
  $('state').textContent = `${formatBytes(session.stateBytes)} (constant)`;
  $('status').textContent = `ready (WebAssembly threads: ${demo.threads})`;
  $('run').disabled = false;
  demo.ready = true;
}

/** The free-text part loads on its own: without it the passkey part works, and the page says what is missing. */
async function openText() {
  try {
    textSession = await InfiniSession.open(PARTS.text.url, { ort, tokenizers });
  } catch (err) {
    demo.textError = String(err);
    showMissing('text-model', PARTS.text, err);
    return;
  }
  $('text-model').textContent = describeModel(PARTS.text, textSession);
  if (textSession.tokenizer) $('count').value = String(textSession.manifest.generation.maxNewTokens);
  else $('stop').disabled = true;
  $('generate').disabled = false;
  demo.textReady = true;
}

/** @param {string} id @param {import('./models.js').ModelPart} part @param {unknown} err */
function showMissing(id, part, err) {
  $(id).textContent = missingModel(part, err);
  $(id).className = 'model bad';
}

async function runPasskey() {
  if (demo.running) return;
  demo.running = true; demo.result = null;
  $('run').disabled = true; $('answer').textContent = '-'; $('answer').className = '';
  try {
    const length = LENGTHS[/** @type {keyof LENGTHS} */ ($('length').value)];
    const depth = Number($('depth').value);
    const key = /^[0-9]{5}$/.test($('key').value) ? $('key').value : ($('key').value = randomKey());
    const prompt = new PasskeyPrompt(length, depth, key);
    const chunk = 64 * session.segmentLen;
    await session.reset(1);
    const memory = [await memorySample(true)];
    $('status').textContent = `streaming a ${length.toLocaleString()}-token passkey prompt`;
    const t0 = performance.now();
    let done = 0;
    let last = null;
    while (done < length) {
      const hi = Math.min(length, done + chunk);
      last = await session.stream(prompt.chunk(done, hi));
      done = hi;
      const seconds = (performance.now() - t0) / 1000;
      $('progress').value = done / length;
      $('tokens').textContent = `${done.toLocaleString()} / ${length.toLocaleString()}`;
      $('speed').textContent = `${Math.round(done / seconds).toLocaleString()}`;
      memory.push(await memorySample());
      $('memory').textContent = describeMemory(memory);
      await yieldToPage();
    }
    const seconds = (performance.now() - t0) / 1000;
    memory.push(await memorySample(true));
    const answerIds = [];
    let logits = /** @type {Float32Array} */ (last?.data);
    for (let i = 0; i < ANSWER_LEN; i++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      answerIds.push(best);
      if (i + 1 < ANSWER_LEN) logits = /** @type {any} */ (await session.stream([best])).data;
    }
    const answer = new TextDecoder().decode(Uint8Array.from(answerIds));
    const correct = isCorrect(answer, key);
    $('answer').textContent = `${JSON.stringify(answer)}: ${correct ? 'correct' : `wrong (key ${key})`}`;
    $('answer').className = correct ? 'ok' : 'bad';
    $('status').textContent = `done: ${length.toLocaleString()} tokens in ${seconds.toFixed(1)} s`;
    demo.result = { length, depth, key, answer, correct, seconds, tokensPerSecond: length / seconds,
      stateBytes: session.stateBytes, memory };
  } catch (err) {
    demo.error = String(err); $('status').textContent = `error: ${err}`;
  } finally {
    demo.running = false; $('run').disabled = false;
  }
}

/** @param {{usedJSHeapSize?: number}[]} samples */
function describeMemory(samples) {
  const used = samples.map((s) => s.usedJSHeapSize).filter((v) => v !== undefined);
  if (!used.length) return 'not reported by this browser';
  return `JS heap ${formatBytes(used[used.length - 1])} (first ${formatBytes(used[0])}, peak ${formatBytes(Math.max(...used))})`;
}

async function generateText() {
  $('generate').disabled = true;
  demo.generated = null; demo.generateError = null; demo.pieces = 0;
  const out = $('generated');
  out.textContent = '';
  try {
    const s = textSession;
    await s.reset(1);
    const temperature = Number($('temperature').value) || 0;
    const opts = { maxNewTokens: Math.max(1, Number($('count').value) | 0), temperature,
      topK: temperature ? 40 : null, seed: temperature ? Date.now() : null };
    let generated = '';
    if (s.tokenizer) {  // text as it comes, piece by piece
      const stop = $('stop').value ? [$('stop').value.replaceAll('\\n', '\n')] : [];
      const t0 = performance.now();
      for await (const piece of s.generateTextIter($('text').value, { ...opts, stop })) {
        generated += piece; demo.pieces++;
        out.append(piece);
        $('genstats').textContent = `${demo.pieces} pieces, ${((performance.now() - t0) / 1000).toFixed(2)} s`;
      }
    } else {  // an artifact without a tokenizer (?text=...): text as bytes
      const ids = await s.generate(new TextEncoder().encode($('text').value), opts);
      generated = new TextDecoder().decode(Uint8Array.from(ids[0]));
      out.textContent = generated;
    }
    demo.generated = generated;
  } catch (err) {
    demo.generateError = String(err);
    $('generated').textContent = `error: ${err}`;
  } finally {
    $('generate').disabled = false;
  }
}

$('run').addEventListener('click', runPasskey);
$('generate').addEventListener('click', generateText);
init().catch((err) => { demo.error = String(err); $('status').textContent = `error: ${err}`; });

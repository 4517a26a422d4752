// Text in, text out on artifacts with a tokenizer: the same continuations as the Python runtime, streamed in whole
// characters; typed errors that change nothing.
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ArtifactError, InputError, NoTokenizerError, TokenizerError } from '../src/errors.js';
import { goldens, open, orts } from './helpers.js';

const index = goldens();
const text = index.tokenizer.text;

function snapshot(/** @type {any} */ s) {
  return JSON.stringify({ st: Object.fromEntries(Object.entries(s.state).map(([k, v]) => [k, Array.from(v.data)])),
    p: s.pendingTokens, n: s.tokensConsumed, b: s.batchSize });
}

for (const { name, ort } of await orts()) {
  for (const [model, { artifact, cases }] of Object.entries(text)) {
    describe(`text generation, ${model} model on ${name}`, () => {
      for (const c of cases) {
        const what = `${JSON.stringify(c.prompt.slice(0, 24))}${c.stop.length ? ` stop ${JSON.stringify(c.stop)}` : ''}`;
        it(`generateText(${what}) equals Python's greedy continuation (${c.by})`, async () => {
          const s = await open(artifact, ort);
          assert.deepEqual(s.encode(c.prompt), c.prompt_ids);
          const got = await s.generateText(c.prompt, { maxNewTokens: c.max_new_tokens, stop: c.stop });
          assert.equal(got, c.text);
          // every generated token consumed, eos too; fewer when a stop string or an eos came first
          const generated = s.tokensConsumed - c.prompt_ids.length;
          assert.ok(generated >= 1 && generated <= c.max_new_tokens);
          if (!c.stop.length && generated < c.max_new_tokens) {
            assert.ok(s.tokenizer?.eos.includes(c.greedy_ids[generated - 1]), 'stopped early without an eos');
          }
        });

        it(`generateTextIter(${what}) streams it in whole characters`, async () => {
          const s = await open(artifact, ort);
          const pieces = [];
          for await (const piece of s.generateTextIter(c.prompt, { maxNewTokens: c.max_new_tokens, stop: c.stop, temperature: 0 })) {
            assert.ok(piece.length > 0);
            assert.ok(!/[\uD800-\uDBFF]$/.test(piece), `a piece ends inside a character: ${JSON.stringify(piece)}`);
            pieces.push(piece);
          }
          assert.equal(pieces.join(''), c.text);
          if (c.text.length > 8) assert.ok(pieces.length > 1, 'the text came in one piece');
        });
      }
    });
  }
}

const [{ ort }] = await orts();
const tiny = text['tiny-bpe'];
const small = text.small;

describe('text calls', () => {
  it("defaults come from the manifest's generation section", async () => {
    const s = await open(tiny.artifact, ort);
    const c = tiny.cases.find((/** @type {any} */ x) => x.max_new_tokens === s.manifest.generation.maxNewTokens && !x.stop.length);
    assert.equal(await s.generateText(c.prompt), c.text);
  });

  it('encode puts bos first where the manifest says add_bos; decode gives the text back', async () => {
    const s = await open(tiny.artifact, ort);
    const ids = s.encode('Straße <eos> 日本');
    assert.equal(ids[0], 0);
    assert.ok(ids.includes(1));
    assert.equal(s.decode(ids, { skipSpecialTokens: false }), '<bos>Straße <eos> 日本');
    assert.equal(s.decode(ids), 'Straße  日本');
    assert.equal(s.decode([]), '');
    assert.throws(() => s.decode([4096]), InputError);
    assert.throws(() => s.encode(/** @type {any} */ (42)), InputError);
  });

  it('the same seed gives the same sampled text, and the session continues from where it was', async () => {
    const s = await open(tiny.artifact, ort);
    const opts = { maxNewTokens: 16, temperature: 1.0, topK: 50, seed: 5 };
    const a = await s.fork().generateText('import os', opts);
    const b = await s.fork().generateText('import os', opts);
    assert.equal(a, b);
    await s.generateText('import os', { maxNewTokens: 3 });
    const n = s.tokensConsumed;
    await s.generateText(' more', { maxNewTokens: 2 });  // a continuation: no bos
    assert.equal(s.tokensConsumed, n + s.encode(' more').length - 1 + 2);
  });

  it('on an artifact without a tokenizer every text call throws NoTokenizerError saying so', async () => {
    const s = await open(index.models.tiny.artifact, ort);
    assert.equal(s.tokenizer, null);
    assert.throws(() => s.encode('hi'), (/** @type {any} */ e) => e instanceof NoTokenizerError && e instanceof InputError &&
      /no tokenizer/.test(e.message));
    assert.throws(() => s.decode([1]), NoTokenizerError);
    await assert.rejects(s.generateText('hi'), /no tokenizer/);
    await assert.rejects(s.generateTextIter('hi').next(), NoTokenizerError);
  });

  const bad = {
    'an empty stop string': [small, 'The sky is', { stop: ['.', ''] }],
    'a stop that is not a string': [small, 'The sky is', { stop: [3] }],
    'a prompt that encodes to no tokens': [small, '', {}],
    'a prompt that is not a string': [small, [1, 2], {}],
    'a negative maxNewTokens': [tiny, 'x', { maxNewTokens: -1 }],
    'a negative temperature': [tiny, 'x', { temperature: -1 }],
  };
  for (const [what, [art, prompt, opts]] of Object.entries(bad)) {
    it(`${what}: InputError, the session unchanged`, async () => {
      const s = await open(art.artifact, ort);
      await s.stream(s.encode('some context'));
      const before = snapshot(s);
      await assert.rejects(s.generateText(/** @type {any} */ (prompt), /** @type {any} */ (opts)), InputError);
      assert.equal(snapshot(s), before);
    });
  }

  it('a tokenizer.json that is not the one the manifest hashed is refused at open (ArtifactError)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'infini-tok-'));
    try {
      cpSync(tiny.artifact, dir, { recursive: true });
      const path = join(dir, 'tokenizer.json');
      writeFileSync(path, readFileSync(path, 'utf8').replace('"<0x41>"', '"<0x42>"'));  // same size, other content
      await assert.rejects(open(dir, ort), (/** @type {any} */ e) => e instanceof ArtifactError && /tokenizer\.json has sha256/.test(e.message));
      // the manifest's size above the cap: refused before the file is read
      const man = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
      man.files.tokenizer.bytes = 2 ** 40;
      writeFileSync(join(dir, 'manifest.json'), JSON.stringify(man));
      rmSync(path);
      await assert.rejects(open(dir, ort), (/** @type {any} */ e) => e instanceof TokenizerError && /not read/.test(e.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a backend failure in the middle of generation leaves the session as it was', async () => {
    const s = await open(tiny.artifact, ort);
    await s.stream(s.encode('some context'));
    const before = snapshot(s);
    const program = /** @type {any} */ (s.artifact.decode);
    const run = program.run.bind(program);
    let calls = 0;
    program.run = (/** @type {any} */ feeds) => (++calls === 6 ? Promise.reject(new Error('device lost')) : run(feeds));
    const pieces = [];
    await assert.rejects((async () => { for await (const p of s.generateTextIter(' and more', { maxNewTokens: 20 })) pieces.push(p); })(),
      /device lost/);
    program.run = run;
    assert.ok(calls === 6);
    assert.equal(snapshot(s), before);
    assert.ok(await s.generateText('x', { maxNewTokens: 2 }) !== undefined);  // usable: the session is not held
  });

  it('a batch of two is refused for text', async () => {
    const s = await open(tiny.artifact, ort, 2);
    await assert.rejects(s.generateText('x'), /batch size 2/);
  });

  it('breaking out of the loop keeps what was generated; calls from inside the loop throw, also on a fork', async () => {
    const s = await open(small.artifact, ort);
    const c = small.cases[0];
    let seen = '';
    for await (const piece of s.generateTextIter(c.prompt, { maxNewTokens: 40 })) {
      seen += piece;
      await assert.rejects(s.stream([32]), /generateTextIter loop is running/);
      await assert.rejects(s.fork().stream([32]), /generateTextIter loop is running/);
      if (seen.length >= 5) break;
    }
    assert.ok(c.text.startsWith(seen));
    assert.equal(s.tokensConsumed, c.prompt_ids.length + new TextEncoder().encode(seen).length);
    assert.ok(await s.stream([32]));  // usable again
  });
});

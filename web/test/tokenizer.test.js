// The tokenizer against the Python tokenizers library: the same ids for a few thousand lines of mixed text, the same
// decodings, round trips, streamed text, stop strings; tokenizer.json and the manifest's sections checked.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ManifestError, TokenizerError } from '../src/errors.js';
import { Manifest } from '../src/manifest.js';
import { StopMatcher, TextStream, TextTokenizer } from '../src/tokenizer.js';
import { GOLDENS, goldens } from './helpers.js';

const index = goldens().tokenizer;
const dir = join(GOLDENS, index.dir);
const lines = /** @type {string[]} */ (JSON.parse(readFileSync(join(dir, index.lines), 'utf8')));

/** @param {string} name */
function specOf(name) {
  const { vocab_size: vocabSize } = index.tokenizers[name];
  return name === 'bpe' ? { file: 'tokenizer', format: 'huggingface-tokenizers', vocabSize, bos: 0, eos: [1], addBos: false }
    : { file: 'tokenizer', format: 'huggingface-tokenizers', vocabSize, bos: null, eos: [], addBos: false };
}

/** @param {string} name */
async function load(name) {
  const bytes = new Uint8Array(readFileSync(join(dir, index.tokenizers[name].tokenizer)));
  return TextTokenizer.fromBytes(bytes, specOf(name), { where: name });
}

/** At most a few differing items, for a message. @param {number[]} bad @param {(i: number) => string} show */
function firstOf(bad, show) { return bad.slice(0, 3).map(show).join('\n'); }

describe('tokenizer vs Python tokenizers', () => {
  it(`the golden lines are mixed text (${lines.length} lines)`, () => {
    assert.ok(lines.length >= 2000);
    const all = lines.join('');
    for (const [what, re] of /** @type {const} */ ([['accented Latin', /é/], ['CJK', /日本/], ['emoji', /\u{1F642}/u],
      ['a ZWJ sequence', /\u200d/], ['whitespace runs', / {3}|\t\t/], ['special tokens', /<bos>|<eos>/]])) {
      assert.ok(re.test(all), `no ${what}`);
    }
  });

  for (const name of Object.keys(index.tokenizers)) {
    describe(`${name} tokenizer`, async () => {
      const want = JSON.parse(readFileSync(join(dir, index.tokenizers[name].encoded), 'utf8'));
      const tok = await load(name);

      it('encodes every line to the same ids as Python (add_special_tokens=false)', () => {
        const bad = [];
        for (let i = 0; i < lines.length; i++) if (JSON.stringify(tok.encode(lines[i])) !== JSON.stringify(want.ids[i])) bad.push(i);
        assert.deepEqual(bad, [], `${bad.length} of ${lines.length} lines differ, e.g.\n` +
          firstOf(bad, (i) => `${JSON.stringify(lines[i])}: ${JSON.stringify(tok.encode(lines[i]))} vs Python ${JSON.stringify(want.ids[i])}`));
        assert.ok(want.ids.some((/** @type {number[]} */ r) => r.length > 20));
      });

      it('decodes them as Python does and back to each line (with and without special tokens)', () => {
        const bad = [];
        for (let i = 0; i < lines.length; i++) {
          const text = tok.decode(want.ids[i], { skipSpecialTokens: false });
          if (text !== want.decoded[i] || text !== lines[i] || tok.decode(want.ids[i], { skipSpecialTokens: true }) !== want.decoded_skip[i]) bad.push(i);
        }
        assert.deepEqual(bad, [], firstOf(bad, (i) => `${JSON.stringify(lines[i])} -> ${JSON.stringify(tok.decode(want.ids[i], { skipSpecialTokens: false }))}`));
      });

      it('decodes random id sequences (cut characters, stray bytes, special tokens) as Python does', () => {
        const bad = [];
        for (let i = 0; i < want.noise.length; i++) {
          if (tok.decode(want.noise[i], { skipSpecialTokens: false }) !== want.noise_decoded[i] ||
              tok.decode(want.noise[i], { skipSpecialTokens: true }) !== want.noise_decoded_skip[i]) bad.push(i);
        }
        assert.deepEqual(bad, [], firstOf(bad, (i) => `${JSON.stringify(want.noise[i])}: ${JSON.stringify(tok.decode(want.noise[i]))} ` +
          `vs Python ${JSON.stringify(want.noise_decoded[i])}`));
      });

      it('streams every line token by token in whole characters, joining to its decoding', () => {
        const bad = [];
        for (let i = 0; i < lines.length; i++) {
          const stream = new TextStream(tok);
          const pieces = want.ids[i].map((/** @type {number} */ id) => stream.push(id));
          pieces.push(stream.flush());
          const broken = pieces.some((p) => p.includes('\uFFFD') || /[\uD800-\uDBFF]$/.test(p) || /^[\uDC00-\uDFFF]/.test(p));
          if (pieces.join('') !== want.decoded_skip[i] || broken) bad.push(i);
        }
        assert.deepEqual(bad, [], firstOf(bad, (i) => JSON.stringify(lines[i])));
      });

      it('streams random id sequences without a piece ending in U+FFFD or inside a character, as decoded where UTF-8', () => {
        let valid = 0;
        for (let i = 0; i < want.noise.length; i++) {
          const stream = new TextStream(tok, [5, 6, 7]);
          const pieces = want.noise[i].map((/** @type {number} */ id) => stream.push(id));
          assert.ok(pieces.every((p) => !p.endsWith('\uFFFD') && !/[\uD800-\uDBFF]$/.test(p)), JSON.stringify(pieces));
          // bytes that are not UTF-8 become U+FFFD for the whole run in a whole decoding, not in streamed text
          if (!want.noise_decoded_skip[i].includes('\uFFFD')) {
            assert.equal(pieces.join('') + stream.flush(), want.noise_decoded_skip[i], JSON.stringify(want.noise[i]));
            valid++;
          }
        }
        assert.ok(valid >= 10, `only ${valid} sequences decode to valid text`);
      });
    });
  }

  it('a multi-byte character split over byte tokens comes out whole, once its last byte has come', async () => {
    const tok = await load('bytes');
    const stream = new TextStream(tok);
    const bytes = [...new TextEncoder().encode('a🙂b')];
    assert.deepEqual(bytes.map((b) => stream.push(b)), ['a', '', '', '', '🙂', 'b']);
    assert.equal(stream.flush(), '');
  });
});

describe('stop strings over streamed text', () => {
  /** @param {string[]} stops @param {string[]} pieces */
  function run(stops, pieces) {
    const m = new StopMatcher(stops);
    const out = [];
    for (const p of pieces) { out.push(m.push(p)); if (m.done) break; }
    out.push(m.end());
    return out;
  }
  it('holds back a possible start of a stop string and cuts before the stop string', () => {
    assert.deepEqual(run(['END'], ['abc E', 'N', 'D tail']), ['abc ', '', '', '']);
    assert.deepEqual(run(['END'], ['abc E', 'x', 'y']), ['abc ', 'Ex', 'y', '']);
    assert.deepEqual(run(['END'], ['no stop']), ['no stop', '']);
    assert.deepEqual(run(['END'], ['ab', 'E']), ['ab', '', 'E']);
  });
  it('the earliest of several stop strings wins, also when it completes later', () => {
    assert.deepEqual(run(['xyz', 'b'], ['axy', 'zb']), ['a', '', '']);
    assert.deepEqual(run(['\n\n', '.'], ['one.\n\ntwo']), ['one', '']);
  });
  it('keeps a character whole when holding back', () => {
    const out = run(['\uDE42x'], ['a🙂']);  // the stop string starts with the second half of 🙂
    assert.deepEqual(out, ['a', '🙂']);
  });
});

describe('tokenizer.json and the manifest sections are checked before use', () => {
  const base = JSON.parse(readFileSync(join(dir, index.tokenizers.bpe.tokenizer), 'utf8'));
  const enc = (/** @type {unknown} */ doc) => new TextEncoder().encode(JSON.stringify(doc));
  /** @type {Record<string, [Uint8Array, object?]>} */
  const cases = {
    'bytes that are not UTF-8': [Uint8Array.of(0x7b, 0xff, 0x7d)],
    'text that is not JSON': [new TextEncoder().encode('{"model": ')],
    'a JSON array': [enc([1, 2])],
    'no model': [enc({ ...base, model: undefined })],
    'an unknown model type': [enc({ ...base, model: { ...base.model, type: 'Magic' } })],
    'a vocabulary id outside vocab_size': [enc({ ...base, model: { ...base.model, vocab: { ...base.model.vocab, zzz: 99999 } } })],
    'a fractional id': [enc({ ...base, model: { ...base.model, vocab: { ...base.model.vocab, zzz: 1.5 } } })],
    'two tokens with one id': [enc({ ...base, model: { ...base.model, vocab: { ...base.model.vocab, zzz: 300 } } })],
    'merges that are not pairs': [enc({ ...base, model: { ...base.model, merges: ['a b c'] } })],
    'an added token without content': [enc({ ...base, added_tokens: [{ id: 0 }] })],
    'a vocab_size other than largest id + 1': [enc(base), { vocabSize: 4097 }],
    'an eos id that is no token': [enc({ ...base, added_tokens: base.added_tokens.slice(0, 1),
      model: { ...base.model, vocab: Object.fromEntries(Object.entries(base.model.vocab).filter(([k]) => k !== '<eos>')) } })],
    'a component without a type': [enc({ ...base, decoder: { decoders: [] } })],
    'components nested too deep': [enc({ ...base, normalizer: JSON.parse('{"type":"Sequence","normalizers":' + '['.repeat(40) + ']'.repeat(40) + '}') })],
    'an unknown decoder': [enc({ ...base, decoder: { type: 'Telepathy' } })],
    'more bytes than allowed': [enc(base), { maxBytes: 1000 }],
  };
  for (const [what, [bytes, extra = {}]] of Object.entries(cases)) {
    it(`refuses ${what} with TokenizerError`, async () => {
      const spec = { ...specOf('bpe'), ...extra };
      await assert.rejects(TextTokenizer.fromBytes(bytes, spec, { where: 'bad.json', maxBytes: /** @type {any} */ (extra).maxBytes }),
        (/** @type {any} */ err) => err instanceof TokenizerError && err.message.startsWith('bad.json'));
    });
  }

  const manifest = JSON.parse(readFileSync(join(index.text['tiny-bpe'].artifact, 'manifest.json'), 'utf8'));
  const sections = {
    'another format': { tokenizer: { ...manifest.tokenizer, format: 'sentencepiece' } },
    'a vocab_size above the model\'s': { tokenizer: { ...manifest.tokenizer, vocab_size: manifest.vocab_size + 1 } },
    'add_bos without bos': { tokenizer: { ...manifest.tokenizer, bos: null } },
    'no eos key': { tokenizer: { ...manifest.tokenizer, eos: undefined } },
    'eos that is not a list': { tokenizer: { ...manifest.tokenizer, eos: 1 } },
    'a file key the files do not list': { tokenizer: { ...manifest.tokenizer, file: 'vocab' } },
    'a negative max_new_tokens': { generation: { ...manifest.generation, max_new_tokens: -1 } },
    'a top_p of 0': { generation: { ...manifest.generation, top_p: 0 } },
  };
  for (const [what, patch] of Object.entries(sections)) {
    it(`a manifest with ${what} is refused with ManifestError`, () => {
      assert.throws(() => Manifest.fromObject({ ...manifest, ...patch }), ManifestError);
    });
  }
  it('the manifest sections as read', () => {
    const m = Manifest.fromObject(manifest);
    assert.deepEqual(m.tokenizer?.eos.slice(0, 1), [1]);
    assert.equal(m.tokenizer?.bos, 0);
    assert.deepEqual(m.generation, { maxNewTokens: 24, temperature: 0, topK: null, topP: null });
    assert.deepEqual(Manifest.fromObject({ ...manifest, generation: undefined }).generation,
      { maxNewTokens: 128, temperature: 0, topK: null, topP: null });
  });
});

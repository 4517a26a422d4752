// The page's passkey prompts against tasks/passkey.py's make_sample (written by the goldens tool).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { PasskeyPrompt, isCorrect } from '../src/passkey.js';
import { GOLDENS, goldens, npy } from './helpers.js';

for (const c of goldens().passkey) {
  it(`prompt of ${c.length} tokens, depth ${c.depth}: the same tokens as Python`, () => {
    const want = Array.from(npy(join(GOLDENS, 'passkey', c.file)).data, Number);
    const prompt = new PasskeyPrompt(c.length, c.depth, c.key);
    assert.equal(prompt.needleStart, c.needle_start);
    assert.deepEqual(Array.from(prompt.chunk(0, c.length)), want);
    const split = Math.floor(c.length / 3);  // made in pieces: the same
    assert.deepEqual([...prompt.chunk(0, split), ...prompt.chunk(split, c.length)], want);
  });
}

it('answers are judged by their first run of digits', () => {
  assert.ok(isCorrect(' 71432', '71432'));
  assert.ok(isCorrect('71432.', '71432'));
  assert.ok(!isCorrect(' 71439', '71432'));
  assert.ok(!isCorrect(' 7143.', '71432'));
});

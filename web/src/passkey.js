// Passkey retrieval prompts, the layout of infini_export/tasks/passkey.py, computed per position (lazily).

export const INSTRUCTION = 'There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ' +
  'I will quiz you about the important information there.';
export const FILLER = ['The grass is green.', 'The sky is blue.', 'The sun is yellow.', 'Here we go.', 'There and back again.'];
export const QUESTION = 'What is the pass key? The pass key is';
export const KEY_DIGITS = 5;
export const ANSWER_LEN = 1 + KEY_DIGITS;

const enc = (/** @type {string} */ s) => new TextEncoder().encode(s);
const needleText = (/** @type {string} */ key) => `The pass key is ${key}. Remember it. ${key} is the pass key.`;
const INSTR = enc(`${INSTRUCTION} `);
const QUEST = enc(QUESTION);
const UNITS = FILLER.map((s) => s.length + 1);
const CYCLE = enc(FILLER.map((s) => `${s} `).join(''));
const NEEDLE_LEN = needleText('0'.repeat(KEY_DIGITS)).length + 1;

/** Length in tokens of a prompt with no filler. */
export function minLength() { return INSTR.length + NEEDLE_LEN + QUEST.length; }

/** Python's round(): halves go to the even neighbour. @param {number} x */
function roundHalfEven(x) {
  const f = Math.floor(x); const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * A passkey prompt of exactly ``length`` byte tokens with the needle (holding ``key``) at ``depth``;
 * tokens are made on demand by ``chunk``, so a 1M-token prompt is never held in memory.
 */
export class PasskeyPrompt {
  /**
   * @param {number} length  tokens (>= minLength())
   * @param {number} depth   in [0, 1]: 0 right after the instruction, 1 right before the question
   * @param {string} key     five digits
   */
  constructor(length, depth, key) {
    if (!Number.isInteger(length) || length < minLength()) throw new RangeError(`length must be an integer >= ${minLength()}, got ${length}`);
    if (!(depth >= 0 && depth <= 1)) throw new RangeError(`depth must lie in [0, 1], got ${depth}`);
    if (!/^[0-9]{5}$/.test(key)) throw new RangeError(`key must be five digits, got ${JSON.stringify(key)}`);
    this.length = length; this.depth = depth; this.key = key;
    this.budget = length - minLength();
    const cycle = CYCLE.length;
    const cycles = Math.floor(this.budget / cycle); const rem = this.budget % cycle;
    let extra = 0;
    if (rem) { let acc = 0; while (acc < rem) acc += UNITS[extra++]; }
    const nUnits = 5 * cycles + extra;
    const k = roundHalfEven(depth * nUnits);
    const before = Math.floor(k / 5) * cycle + UNITS.slice(0, k % 5).reduce((a, b) => a + b, 0);
    this.needleStart = INSTR.length + Math.min(this.budget, before);
    this.questionStart = length - QUEST.length;
    this.needle = enc(`${needleText(key)} `);
  }

  /**
   * Tokens [lo, hi) of the prompt.
   * @param {number} lo @param {number} hi
   * @returns {Uint8Array}
   */
  chunk(lo, hi) {
    const out = new Uint8Array(hi - lo);
    const ns = this.needleStart; const ne = ns + NEEDLE_LEN; const qs = this.questionStart;
    for (let t = lo; t < hi; t++) {
      let v;
      if (t < INSTR.length) v = INSTR[t];
      else if (t >= qs) v = QUEST[t - qs];
      else if (t >= ns && t < ne) v = this.needle[t - ns];
      else {
        const f = t < ns ? t - INSTR.length : t - INSTR.length - NEEDLE_LEN;
        v = f === this.budget - 1 ? 32 : CYCLE[f % CYCLE.length];
      }
      out[t - lo] = v;
    }
    return out;
  }
}

/**
 * Whether a decoded answer is right: its first run of digits is exactly the key.
 * @param {string} answer @param {string} key
 */
export function isCorrect(answer, key) {
  const m = /[0-9]+/.exec(answer);
  return m !== null && m[0] === key;
}

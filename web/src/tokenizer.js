// Text in and out: the artifact's tokenizer.json (Hugging Face tokenizers format) through @huggingface/tokenizers,
// checked before use, and incremental detokenization for text that streams as tokens come.
import { ManifestError, InputError, TokenizerError } from './errors.js';

export const TOKENIZER_FORMAT = 'huggingface-tokenizers';
/** Default cap on tokenizer.json's size (the largest common ones are ~35 MB). */
export const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
/** Generation defaults where the manifest has no ``generation`` section. */
export const GENERATION_DEFAULTS = Object.freeze({ maxNewTokens: 128, temperature: 0, topK: null, topP: null });

const MODELS = ['BPE', 'WordPiece', 'Unigram'];
const COMPONENTS = ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder'];
const MAX_DEPTH = 32;          // nesting of a component (Sequence of Sequence ...)
const MAX_PATTERN = 4096;      // characters of one regular expression in a component
/** ids of the recent window a text stream decodes before the new token (as text-generation-inference does). */
const STREAM_CONTEXT = 5;

/**
 * The manifest's ``tokenizer`` section.
 * @typedef {object} TokenizerSpec
 * @property {string} file       the files key of tokenizer.json
 * @property {string} format     'huggingface-tokenizers'
 * @property {number} vocabSize  largest token id + 1
 * @property {number | null} bos
 * @property {number[]} eos      generation stops at any of them
 * @property {boolean} addBos    encode prepends bos
 */

/**
 * Generation defaults (the manifest's ``generation`` section, with this runtime's defaults filled in).
 * @typedef {{maxNewTokens: number, temperature: number, topK: number | null, topP: number | null}} GenerationDefaults
 */

/**
 * Check the manifest's ``tokenizer`` section (ManifestError naming what is wrong).
 * @param {unknown} raw
 * @param {{vocabSize: number, file: (key: string) => unknown}} manifest
 * @returns {TokenizerSpec}
 */
export function parseTokenizerSpec(raw, manifest) {
  const bad = (/** @type {string} */ why) => new ManifestError(`manifest tokenizer ${why}`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(`must be an object, got ${JSON.stringify(raw)}`);
  const t = /** @type {any} */ (raw);
  const missing = ['file', 'format', 'vocab_size', 'bos', 'eos', 'add_bos'].filter((k) => !(k in t));
  if (missing.length) throw bad(`lacks the keys ${JSON.stringify(missing)}; expected file, format, vocab_size, bos, eos, add_bos`);
  if (typeof t.file !== 'string') throw bad(`file must name a files key, got ${JSON.stringify(t.file)}`);
  manifest.file(t.file);
  if (t.format !== TOKENIZER_FORMAT) {
    throw bad(`format is ${JSON.stringify(t.format)}; this runtime reads ${JSON.stringify(TOKENIZER_FORMAT)} (tokenizer.json)`);
  }
  const V = t.vocab_size;
  if (!(Number.isInteger(V) && V >= 1)) throw bad(`vocab_size must be an integer >= 1 (largest id + 1), got ${JSON.stringify(V)}`);
  if (V > manifest.vocabSize) {
    throw bad(`vocab_size ${V} exceeds the model's vocab_size ${manifest.vocabSize}: it would give ids the model cannot take`);
  }
  const isId = (/** @type {unknown} */ x) => Number.isInteger(x) && /** @type {number} */ (x) >= 0 && /** @type {number} */ (x) < V;
  const bos = t.bos;
  if (bos !== null && !isId(bos)) throw bad(`bos must be null or an id in [0, ${V}), got ${JSON.stringify(t.bos)}`);
  const eos = t.eos;
  if (!Array.isArray(eos) || !eos.every(isId)) throw bad(`eos must be a list of ids in [0, ${V}), got ${JSON.stringify(t.eos)}`);
  const addBos = t.add_bos;
  if (typeof addBos !== 'boolean') throw bad(`add_bos must be true or false, got ${JSON.stringify(t.add_bos)}`);
  if (addBos && bos === null) throw bad('has add_bos true but no bos id');
  return { file: t.file, format: t.format, vocabSize: V, bos, eos: [...eos], addBos };
}

/**
 * Check the manifest's ``generation`` section (absent: the defaults). top_k 0 and top_p 1 mean no filter.
 * @param {unknown} raw
 * @returns {GenerationDefaults}
 */
export function parseGeneration(raw) {
  if (raw === undefined || raw === null) return { ...GENERATION_DEFAULTS };
  const bad = (/** @type {string} */ why) => new ManifestError(`manifest generation ${why}`);
  if (typeof raw !== 'object' || Array.isArray(raw)) throw bad(`must be an object, got ${JSON.stringify(raw)}`);
  const g = /** @type {any} */ (raw);
  const n = g.max_new_tokens ?? GENERATION_DEFAULTS.maxNewTokens;
  if (!(Number.isInteger(n) && n >= 0)) throw bad(`max_new_tokens must be an integer >= 0, got ${JSON.stringify(n)}`);
  const temperature = g.temperature ?? 0;
  if (!(typeof temperature === 'number' && Number.isFinite(temperature) && temperature >= 0)) {
    throw bad(`temperature must be a finite number >= 0, got ${JSON.stringify(temperature)}`);
  }
  const topK = g.top_k ?? 0;
  if (!(Number.isInteger(topK) && topK >= 0)) throw bad(`top_k must be an integer >= 0 (0: off), got ${JSON.stringify(topK)}`);
  const topP = g.top_p ?? 1;
  if (!(typeof topP === 'number' && topP > 0 && topP <= 1)) throw bad(`top_p must be a number in (0, 1] (1: off), got ${JSON.stringify(topP)}`);
  return { maxNewTokens: n, temperature, topK: topK === 0 ? null : topK, topP: topP === 1 ? null : topP };
}

/**
 * Check the shape of a parsed tokenizer.json before any library code sees it; returns the document with the
 * optional components set to null. Throws TokenizerError.
 * @param {unknown} doc
 * @param {TokenizerSpec} spec
 * @param {string} where
 */
export function checkTokenizerJson(doc, spec, where) {
  const bad = (/** @type {string} */ why) => new TokenizerError(`${where} is not a usable tokenizer.json: ${why}`);
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('the document must be a JSON object');
  const d = /** @type {any} */ (doc);
  const model = d.model;
  if (typeof model !== 'object' || model === null || Array.isArray(model)) throw bad('it has no model object');
  if (!MODELS.includes(model.type)) throw bad(`model type ${JSON.stringify(model.type)} is not one of ${JSON.stringify(MODELS)}`);
  /** @type {Map<number, string>} */
  const byId = new Map();
  const addId = (/** @type {unknown} */ id, /** @type {unknown} */ token, /** @type {string} */ what) => {
    if (typeof token !== 'string') throw bad(`${what} has a token that is not a string: ${JSON.stringify(token)?.slice(0, 80)}`);
    if (!(Number.isInteger(id) && /** @type {number} */ (id) >= 0 && /** @type {number} */ (id) < spec.vocabSize)) {
      throw bad(`${what} gives ${JSON.stringify(token).slice(0, 80)} the id ${JSON.stringify(id)}, outside [0, ${spec.vocabSize}) ` +
        "(the manifest's tokenizer vocab_size)");
    }
    const seen = byId.get(/** @type {number} */ (id));
    if (seen !== undefined && seen !== token) throw bad(`${what} gives the id ${id} to both ${JSON.stringify(seen)} and ${JSON.stringify(token)}`);
    byId.set(/** @type {number} */ (id), token);
  };
  if (model.type === 'Unigram') {
    if (!Array.isArray(model.vocab)) throw bad('a Unigram model needs vocab as a list of [piece, score]');
    model.vocab.forEach((/** @type {unknown} */ e, /** @type {number} */ i) => {
      if (!Array.isArray(e) || e.length !== 2 || typeof e[1] !== 'number') throw bad(`Unigram vocab entry ${i} is not [piece, score]`);
      addId(i, e[0], 'model vocab');
    });
  } else {
    if (typeof model.vocab !== 'object' || model.vocab === null || Array.isArray(model.vocab)) {
      throw bad(`a ${model.type} model needs vocab as an object of token -> id`);
    }
    for (const [token, id] of Object.entries(model.vocab)) addId(id, token, 'model vocab');
  }
  if (model.type === 'BPE') {
    if (!Array.isArray(model.merges)) throw bad('a BPE model needs merges as a list');
    for (const m of model.merges) {
      const ok = typeof m === 'string' ? m.split(' ').length === 2 : Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string');
      if (!ok) throw bad(`merge ${JSON.stringify(m).slice(0, 80)} is not "a b" or ["a", "b"]`);
    }
  }
  const added = d.added_tokens ?? [];
  if (!Array.isArray(added)) throw bad('added_tokens must be a list');
  for (const a of added) {
    if (typeof a !== 'object' || a === null || typeof a.content !== 'string' || a.content === '') {
      throw bad(`added token ${JSON.stringify(a)?.slice(0, 80)} has no non-empty content`);
    }
    addId(a.id, a.content, 'added_tokens');
  }
  const largest = Math.max(-1, ...byId.keys());
  if (largest + 1 !== spec.vocabSize) {
    throw bad(`its largest id is ${largest}; the manifest's tokenizer vocab_size says ${spec.vocabSize} (largest id + 1)`);
  }
  for (const id of [...(spec.bos === null ? [] : [spec.bos]), ...spec.eos]) {
    if (!byId.has(id)) throw bad(`the manifest's bos/eos id ${id} is not a token of it`);
  }
  const out = { ...d, added_tokens: added };
  for (const key of COMPONENTS) {
    const c = d[key] ?? null;
    if (c !== null) checkComponent(c, `${key}`, 0, bad);
    out[key] = c;
  }
  return out;
}

/**
 * @param {any} c @param {string} path @param {number} depth
 * @param {(why: string) => Error} bad
 */
function checkComponent(c, path, depth, bad) {
  if (depth > MAX_DEPTH) throw bad(`${path} nests deeper than ${MAX_DEPTH} levels`);
  if (typeof c !== 'object' || c === null) return;
  if (Array.isArray(c)) { c.forEach((x, i) => checkComponent(x, `${path}[${i}]`, depth + 1, bad)); return; }
  if (depth === 0 && typeof c.type !== 'string') throw bad(`${path} has no type`);
  if (typeof c.Regex === 'string' && c.Regex.length > MAX_PATTERN) throw bad(`${path} has a regular expression of ${c.Regex.length} characters (at most ${MAX_PATTERN})`);
  for (const [k, v] of Object.entries(c)) if (typeof v === 'object' && v !== null) checkComponent(v, `${path}.${k}`, depth + 1, bad);
}

/** Bytes to text as the Rust tokenizers' ByteFallback decoder does: invalid UTF-8 gives one U+FFFD per byte. */
const RUST_BYTE_FALLBACK = {
  strict: new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }),
  /** @param {Uint8Array} bytes */
  decode(bytes) {
    try { return this.strict.decode(bytes); } catch { return '\uFFFD'.repeat(bytes.length); }
  },
};

/** @param {any} decoder */
function matchRustDecoders(decoder) {
  if (!decoder || (typeof decoder !== 'object' && typeof decoder !== 'function')) return;  // the library's are callable
  if (decoder.config?.type === 'ByteFallback' && 'text_decoder' in decoder) decoder.text_decoder = RUST_BYTE_FALLBACK;
  if (Array.isArray(decoder.decoders)) decoder.decoders.forEach(matchRustDecoders);
}

/**
 * The @huggingface/tokenizers module: the one given, else imported by its package name (Node, or a page whose
 * import map names it).
 * @param {any} [module]
 */
async function tokenizersModule(module) {
  if (module) return module;
  try {
    return await import('@huggingface/tokenizers');
  } catch (err) {
    throw new TokenizerError('this artifact has a tokenizer, and the @huggingface/tokenizers module could not be imported ' +
      `(${/** @type {Error} */ (err).message}); pass it as options.tokenizers or map its name in the page's import map`, { cause: err });
  }
}

/** An artifact's tokenizer: text to ids as the manifest says (bos when add_bos), ids to text. */
export class TextTokenizer {
  /**
   * @param {any} impl  a @huggingface/tokenizers Tokenizer
   * @param {TokenizerSpec} spec
   */
  constructor(impl, spec) {
    this.impl = impl;
    this.spec = spec;
    /** Largest id + 1. */
    this.vocabSize = spec.vocabSize;
    this.bos = spec.bos;
    this.eos = [...spec.eos];
    this.addBos = spec.addBos;
  }

  /**
   * Build from tokenizer.json's bytes (size-capped, UTF-8, JSON, shape-checked; TokenizerError otherwise).
   * @param {Uint8Array} bytes
   * @param {TokenizerSpec} spec
   * @param {{where?: string, maxBytes?: number, module?: any}} [options]
   */
  static async fromBytes(bytes, spec, options = {}) {
    const { where = 'tokenizer.json', maxBytes = MAX_TOKENIZER_BYTES } = options;
    if (bytes.length > maxBytes) {
      throw new TokenizerError(`${where} has ${bytes.length} bytes, more than the ${maxBytes} allowed (options.maxTokenizerBytes)`);
    }
    let doc;
    try {
      doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    } catch (err) {
      throw new TokenizerError(`${where} is not UTF-8 JSON: ${/** @type {Error} */ (err).message}`, { cause: err });
    }
    const checked = checkTokenizerJson(doc, spec, where);
    const { Tokenizer } = await tokenizersModule(options.module);
    let impl;
    try {
      impl = new Tokenizer(checked, { clean_up_tokenization_spaces: false });
      matchRustDecoders(impl.decoder);
      impl.encode('', { add_special_tokens: false });
    } catch (err) {
      throw new TokenizerError(`${where} could not be loaded by @huggingface/tokenizers: ${String(/** @type {Error} */ (err)?.message ?? err).slice(0, 300)}`, { cause: err });
    }
    return new TextTokenizer(impl, spec);
  }

  /**
   * Token ids of ``text`` (special tokens written in the text are recognised; no post-processor tokens), with
   * ``bos`` first when the manifest says ``add_bos``.
   * @param {string} text
   * @param {{addBos?: boolean}} [options]  override the manifest's add_bos
   * @returns {number[]}
   */
  encode(text, options = {}) {
    if (typeof text !== 'string') throw new InputError(`text to encode must be a string, got ${text === null ? 'null' : typeof text}`);
    const ids = /** @type {number[]} */ (this.impl.encode(text, { add_special_tokens: false }).ids);
    const bad = ids.find((i) => !(Number.isInteger(i) && i >= 0 && i < this.vocabSize));
    if (bad !== undefined) {
      throw new TokenizerError(`the tokenizer gave the id ${bad} for this text, outside [0, ${this.vocabSize}) (no unknown token in its vocabulary?)`);
    }
    return (options.addBos ?? this.addBos) && this.bos !== null ? [this.bos, ...ids] : ids;
  }

  /**
   * Text of token ids.
   * @param {ArrayLike<number | bigint>} ids
   * @param {{skipSpecialTokens?: boolean}} [options]  leave out special tokens (bos, eos, ...); default true
   * @returns {string}
   */
  decode(ids, options = {}) {
    const list = checkTokenIds(ids, this.vocabSize);
    if (!list.length) return '';
    return this.impl.decode(list, { skip_special_tokens: options.skipSpecialTokens ?? true, clean_up_tokenization_spaces: false });
  }
}

/**
 * @param {unknown} ids @param {number} vocab
 * @returns {number[]}
 */
function checkTokenIds(ids, vocab) {
  if (!(Array.isArray(ids) || ArrayBuffer.isView(ids)) || ids instanceof Float32Array || ids instanceof Float64Array) {
    throw new InputError('ids to decode must be an array or an integer typed array of token ids');
  }
  const list = Array.from(/** @type {ArrayLike<number | bigint>} */ (ids), Number);
  const bad = list.findIndex((i) => !(Number.isInteger(i) && i >= 0 && i < vocab));
  if (bad >= 0) throw new InputError(`token id ${JSON.stringify(String(Array.from(/** @type {any} */ (ids))[bad]))} at ${bad} is not an id of the tokenizer, expected integers in [0, ${vocab})`);
  return list;
}

/**
 * Incremental detokenization: text as tokens come, never a piece that ends inside a character. It decodes a window
 * of recent ids and emits only the text that the newest id made stable; a decoding that ends in U+FFFD (a
 * character whose bytes have not all come) waits for more ids. ``flush`` emits what is left at the end.
 */
export class TextStream {
  /**
   * @param {TextTokenizer} tokenizer
   * @param {number[]} [context]  the ids before the first pushed one (the prompt): decoded with it, never emitted
   */
  constructor(tokenizer, context = []) {
    this.tokenizer = tokenizer;
    /** @type {number[]} */ this.ids = context.slice(-STREAM_CONTEXT);
    this.prefix = 0;
    this.read = this.ids.length;
  }

  /** @param {number} lo @param {number} [hi] */
  _text(lo, hi) { return this.tokenizer.decode(this.ids.slice(lo, hi), { skipSpecialTokens: true }); }

  /**
   * Add a token id; returns the text it completed ('' while a character is incomplete).
   * @param {number} id
   */
  push(id) {
    this.ids.push(id);
    const before = this._text(this.prefix, this.read);
    const now = this._text(this.prefix);
    if (now.length > before.length && now.startsWith(before) && !now.endsWith('\uFFFD')) {
      this.ids = this.ids.slice(this.read);  // the next window starts at the ids just emitted
      this.prefix = 0; this.read = this.ids.length;
      return now.slice(before.length);
    }
    return '';
  }

  /** The text not emitted yet (at the end of generation: even an incomplete character, as U+FFFD). */
  flush() {
    const before = this._text(this.prefix, this.read);
    const now = this._text(this.prefix);
    this.ids = this.ids.slice(this.read); this.prefix = 0; this.read = this.ids.length;
    return now.startsWith(before) ? now.slice(before.length) : now.slice(commonPrefix(before, now));
  }
}

/** @param {string} a @param {string} b */
function commonPrefix(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  if (i > 0 && i < b.length && isHighSurrogate(b.charCodeAt(i - 1))) i--;
  return i;
}

/** @param {number} c */
function isHighSurrogate(c) { return c >= 0xd800 && c <= 0xdbff; }

/**
 * Stop strings over streamed text: holds back text that may be the start of a stop string, and ends the text
 * before the first stop string found.
 */
export class StopMatcher {
  /** @param {string[]} stops */
  constructor(stops) {
    this.stops = stops;
    this.held = '';
    this.done = false;
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /**
   * Add stable text; returns the text that can be emitted (before any stop string, and not a possible start of one).
   * @param {string} text
   */
  push(text) {
    if (this.done) return '';
    const buf = this.held + text;
    let cut = -1;
    for (const s of this.stops) {
      const at = buf.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) { this.done = true; this.held = ''; return buf.slice(0, cut); }
    let keep = 0;
    for (let k = Math.min(buf.length, this.longest - 1); k > 0; k--) {
      const tail = buf.slice(buf.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) { keep = k; break; }
    }
    if (keep > 0 && isHighSurrogate(buf.charCodeAt(buf.length - keep - 1))) keep++;  // keep a character whole
    this.held = buf.slice(buf.length - keep);
    return buf.slice(0, buf.length - keep);
  }

  /** The held text at the end of generation (no stop string came). */
  end() {
    const rest = this.done ? '' : this.held;
    this.held = ''; this.done = true;
    return rest;
  }
}

/**
 * Stop strings as given (a string or a list of them): each non-empty (InputError).
 * @param {unknown} stop
 * @returns {string[]}
 */
export function checkStop(stop) {
  if (stop === undefined || stop === null) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) {
    throw new InputError(`stop must be a string or a list of strings, got ${JSON.stringify(stop)}`);
  }
  if (list.some((s) => s === '')) throw new InputError('stop strings must be non-empty: an empty stop string would end generation before any text');
  return [...list];
}


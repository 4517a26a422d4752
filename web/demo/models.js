// The demo page's two models: which artifact each part of the page loads, and how the page names it.
import { formatBytes } from './memory.js';

/**
 * @typedef {object} ModelPart
 * @property {string} what   what the page calls the model
 * @property {URL} url       the artifact's folder
 * @property {string} name   the bundled checkpoint and its export folder, or the artifact's path when the URL gave another
 * @property {string | null} hint  how to make the default artifact (null for one the URL gave)
 */

const BUNDLED = {
  passkey: { what: 'passkey model', param: 'artifact', checkpoint: 'models/passkey-small', folder: 'out/web-onnx' },
  text: { what: 'text model', param: 'text', checkpoint: 'models/text-small', folder: 'out/web-text' },
};

/**
 * The passkey part's and the free-text part's artifacts: the bundled models' exports (`make web` writes them,
 * relative to the repository root that serves web/demo/), or ?artifact= and ?text= relative to the page.
 * @param {URLSearchParams} params
 * @param {string} page  the page's URL
 * @returns {{passkey: ModelPart, text: ModelPart}}
 */
export function modelParts(params, page) {
  /** @param {typeof BUNDLED.passkey} b @returns {ModelPart} */
  const part = (b) => {
    const given = params.get(b.param);
    const url = new URL(given ?? `../../${b.folder}/`, page);
    return given === null
      ? { what: b.what, url, name: `${b.checkpoint} (${b.folder})`, hint: `\`make web\` exports ${b.checkpoint} to ${b.folder}` }
      : { what: b.what, url, name: url.pathname, hint: null };
  };
  return { passkey: part(BUNDLED.passkey), text: part(BUNDLED.text) };
}

/**
 * One line on the model a part uses: its name, then what its manifest says.
 * @param {ModelPart} part
 * @param {import('../src/index.js').InfiniSession} s
 */
export function describeModel(part, s) {
  const cfg = s.manifest.data.model?.config ?? {};
  return `${part.what}: ${part.name}, fingerprint ${s.manifest.fingerprint.slice(0, 12)}; ${cfg.n_layers} layers, ` +
    `${cfg.n_heads} heads, segment ${s.segmentLen} tokens, state ${formatBytes(s.stateBytes)}; ` +
    `${s.tokenizer ? `tokenizer of ${s.tokenizer.vocabSize.toLocaleString()} tokens` : 'no tokenizer (text as bytes)'}; ` +
    `sha256 ${s.artifact.verified ? 'verified' : 'not checked (no WebCrypto)'}; ${s.decoding ? 'decode program' : 'segment step only'}`;
}

/**
 * What the page says when a part's artifact did not load.
 * @param {ModelPart} part
 * @param {unknown} err
 */
export function missingModel(part, err) {
  return `no ${part.what}: ${part.name} did not load${part.hint ? ` (${part.hint})` : ''}. ${err}`;
}

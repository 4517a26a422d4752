// Opening an artifact: manifest.json checked, files size- and sha256-verified, the program loaded.
import { ArtifactError, ManifestError, StateError, TokenizerError } from './errors.js';
import { canHash, sha256Hex } from './hash.js';
import { MANIFEST_FILE, Manifest, concreteShape } from './manifest.js';
import { readNpyData, readNpyHeader } from './npy.js';
import { OrtProgram } from './backend_ort.js';
import { memberData, readZipDirectory } from './zip.js';
import { MAX_TOKENIZER_BYTES, TextTokenizer } from './tokenizer.js';

/**
 * @typedef {object} OpenOptions
 * @property {import('./backend_ort.js').OrtModule} ort  onnxruntime-web or onnxruntime-node
 * @property {boolean} [verify]          check every listed file's size and sha256 (default true)
 * @property {object} [sessionOptions]   passed to ort.InferenceSession.create
 * @property {boolean} [useDecode]       load the artifact's decode program where it has one (default true)
 * @property {any} [tokenizers]          the @huggingface/tokenizers module (default: imported by that name when the
 *                                       artifact has a tokenizer)
 * @property {number} [maxTokenizerBytes] refuse a larger tokenizer.json (default 64 MiB)
 */

/**
 * @typedef {object} LoadedArtifact
 * @property {Manifest} manifest
 * @property {OrtProgram} program         the segment step
 * @property {OrtProgram | null} decode    the decode program (manifest.decode), when loaded
 * @property {Float32Array[]} initial      initial state for batch 1, per manifest state entry
 * @property {Map<string, Uint8Array>} files  file bytes by files key (programs, weights, ...)
 * @property {boolean} verified           whether sha256 was checked (false where the platform cannot hash)
 * @property {TextTokenizer | null} tokenizer  the artifact's tokenizer (manifest.tokenizer), when it has one
 */

/**
 * Read and check an artifact from a source.
 * @param {import('./source.js').ArtifactSource} source
 * @param {OpenOptions} options
 * @returns {Promise<LoadedArtifact>}
 */
export async function loadArtifact(source, options) {
  const { ort, verify = true, sessionOptions = {}, useDecode = true, maxTokenizerBytes = MAX_TOKENIZER_BYTES } = options;
  if (!ort || typeof ort.InferenceSession?.create !== 'function' || typeof ort.Tensor !== 'function') {
    throw new TypeError('options.ort must be the onnxruntime-web or onnxruntime-node module');
  }
  const text = new TextDecoder().decode(await source.read(MANIFEST_FILE));
  const manifest = Manifest.parse(text, `${source.where}${MANIFEST_FILE}`);
  const program = manifest.data.program;
  if (program.format !== 'onnx') {
    throw new ManifestError(`manifest program format is ${JSON.stringify(program.format)}; this runtime runs 'onnx'`);
  }
  const hashing = verify && canHash();
  const tokSpec = manifest.tokenizer;
  /** @type {Map<string, Uint8Array>} */
  const files = new Map();
  for (const [key, entry] of Object.entries(manifest.data.files)) {  // every file: programs, their weights, ...
    const where = `${source.where}${entry.path}`;
    if (key === tokSpec?.file && entry.bytes !== undefined && entry.bytes > maxTokenizerBytes) {
      throw new TokenizerError(`the manifest lists ${where} with ${entry.bytes} bytes, more than the ${maxTokenizerBytes} ` +
        'allowed for a tokenizer (options.maxTokenizerBytes); not read');
    }
    const bytes = await source.read(entry.path);
    if (verify && entry.bytes !== undefined && bytes.length !== entry.bytes) {
      throw new ArtifactError(`artifact file ${where} has ${bytes.length} bytes, the manifest says ${entry.bytes} (truncated or replaced)`);
    }
    if (hashing) {
      const digest = await sha256Hex(bytes);
      if (digest !== entry.sha256) {
        throw new ArtifactError(`artifact file ${where} has sha256 ${digest.slice(0, 16)}..., the manifest says ` +
          `${entry.sha256.slice(0, 16)}... (corrupt or replaced)`);
      }
    }
    files.set(key, bytes);
  }
  const initial = initialState(manifest, files);
  const tokenizer = tokSpec ? await TextTokenizer.fromBytes(/** @type {Uint8Array} */ (files.get(tokSpec.file)), tokSpec,
    { where: `${source.where}${manifest.file(tokSpec.file).path}`, maxBytes: maxTokenizerBytes, module: options.tokenizers }) : null;
  const load = (/** @type {string} */ key, /** @type {{inputs: any[], outputs: any[]}} */ io) => {
    // the other files (e.g. weights.bin) are the graph's external data, by their path in the folder
    const externalData = Object.entries(manifest.data.files).filter(([k]) => k !== key && k !== tokSpec?.file)
      .map(([k, e]) => ({ path: e.path, data: /** @type {Uint8Array} */ (files.get(k)) }));
    return OrtProgram.load(ort, /** @type {Uint8Array} */ (files.get(key)), io, manifest.file(key).path,
      { ...sessionOptions, externalData });
  };
  const step = await load(program.file, { inputs: manifest.data.inputs, outputs: manifest.data.outputs });
  const spec = manifest.decode;
  const decode = spec && useDecode ? await load(spec.file, { inputs: spec.inputs, outputs: spec.outputs }) : null;
  return { manifest, program: step, decode, initial, files, verified: hashing, tokenizer };
}

/**
 * @param {Manifest} manifest @param {Map<string, Uint8Array>} files
 * @returns {Float32Array[]}
 */
function initialState(manifest, files) {
  const init = manifest.data.initial_state ?? 'zeros';
  if (init === 'zeros') return manifest.state.map((e) => new Float32Array(concreteShape(e.shape, 1).reduce((a, b) => a * b, 1)));
  const bytes = /** @type {Uint8Array} */ (files.get(init.file));
  try {
    const members = readZipDirectory(bytes);
    return manifest.state.map((e) => {
      const m = members.get(`${e.name}.npy`);
      if (!m) throw new StateError(`it lacks ${e.name}`);
      const npy = memberData(bytes, m);
      const h = readNpyHeader(npy);
      const want = concreteShape(e.shape, 1);
      if (h.dtype !== 'float32' || JSON.stringify(h.shape) !== JSON.stringify(want)) {
        throw new StateError(`${e.name} is ${h.dtype} (${h.shape}), expected float32 (${want})`);
      }
      return /** @type {Float32Array} */ (readNpyData(npy, h));
    });
  } catch (err) {
    throw new ArtifactError(`the initial state file ${manifest.file(init.file).path} is unusable: ${/** @type {Error} */ (err).message}`, { cause: err });
  }
}

// infini-export for JavaScript: run an exported Infini-Transformer artifact with onnxruntime-web or -node.
export { InfiniSession } from './session.js';
export { ArtifactError, InfiniRuntimeError, InputError, ManifestError, StateError, TokenizerError, NoTokenizerError } from './errors.js';
export { TextTokenizer, TextStream } from './tokenizer.js';
export { Manifest, FORMAT, FORMAT_VERSION } from './manifest.js';
export { urlSource } from './source.js';
export { encodeStateFile, decodeStateFile } from './state_file.js';
export { samplingProbs, Rng } from './sampling.js';
export { checkRelativePath } from './paths.js';

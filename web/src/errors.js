// The runtime's errors, mirroring runtime/errors.py: every message says what was expected and what came.

/** Base of every error the runtime throws on bad input or a bad artifact. */
export class InfiniRuntimeError extends Error {
  /** @param {string} message @param {{cause?: unknown}} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An artifact file is missing, truncated, corrupt, outside the artifact, or does not match its manifest. */
export class ArtifactError extends InfiniRuntimeError {}

/** manifest.json is missing, unreadable, of an unsupported version, or inconsistent. */
export class ManifestError extends InfiniRuntimeError {}

/** Token ids or sampling arguments are not what the model accepts. */
export class InputError extends InfiniRuntimeError {}

/** A state (in memory or in a file) does not belong to this model or is malformed. */
export class StateError extends InfiniRuntimeError {}

/** The artifact's tokenizer is too large, unreadable, or does not fit the manifest or the model. */
export class TokenizerError extends ArtifactError {}

/** A text call (encode, decode, generateText) on an artifact without a tokenizer. */
export class NoTokenizerError extends InputError {}

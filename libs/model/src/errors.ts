/**
 * One error class per kind of bad model input. Each names the file and the field or tensor at fault, so a user
 * can fix the checkpoint without reading our code.
 */

/** A config.json that is not a supported LLaMA-family config: unknown model_type, rope type, missing field. */
export class ModelConfigError extends Error {
  override readonly name = 'ModelConfigError';
  constructor(
    readonly file: string,
    readonly field: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${field}: ${message}`, options);
  }
}

/** Checkpoint weights that are missing, truncated or disagree with config.json. */
export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
  constructor(
    readonly file: string,
    readonly tensor: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    // Messages about a tensor are predicates ("has shape ..."), so the text reads "file: tensor X has shape ...".
    super(`${file}: ${tensor === undefined ? '' : `tensor ${tensor} `}${message}`, options);
  }
}

/** A PEFT LoRA adapter that cannot be read, is unsupported, or does not fit the model it is applied to. */
export class PeftAdapterError extends Error {
  override readonly name = 'PeftAdapterError';
  constructor(
    readonly file: string,
    /** The tensor or adapter_config.json field at fault, if one is. */
    readonly subject: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}${subject === undefined ? '' : `: ${subject}`}: ${message}`, options);
  }
}

/** tokenizer.json / tokenizer_config.json problems, and chat templates that fail to render. */
export class TokenizerError extends Error {
  override readonly name = 'TokenizerError';
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
  }
}

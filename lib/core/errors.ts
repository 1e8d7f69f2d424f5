/**
 * The package's error class. Native code throws it (with a `code`) for failures that are not a
 * plain wrong-type or out-of-range argument; those are TypeError / RangeError with a `code` too
 * (`ERR_INVALID_ARG_TYPE`, `ERR_OUT_OF_RANGE`).
 */

/**
 * Every code a MoeError carries. test/80 checks that each code thrown by lib/ and native/ is here;
 * adding one means adding it to this list (and to the README's list of errors).
 */
export const MOE_ERROR_CODES = [
  /** The object was disposed (or its file closed) and cannot be used again. */
  'ERR_DISPOSED',
  /** The backend asked for is not in this build or cannot run here. */
  'ERR_BACKEND_UNAVAILABLE',
  /** A native op refused its arguments (checked again natively after the TypeScript checks). */
  'ERR_INVALID_ARGUMENT',
  /** An allocation would not fit, or failed. */
  'ERR_OUT_OF_MEMORY',
  /** An async call's output buffer was detached, transferred or shrunk while the call ran: not written. */
  'ERR_DETACHED',
  /** A combination of dtypes, shapes or options that this build does not implement. */
  'ERR_UNSUPPORTED',
  /** A defect of the library; please report it. */
  'ERR_INTERNAL',
  /** The object is in use by another call (a model runs one sequence at a time). */
  'ERR_BUSY',
  /** An AbortSignal ended the call. */
  'ERR_ABORTED',
  /** A config.json field is missing, of the wrong type or out of range. */
  'ERR_CONFIG',
  /** A file or directory the call needs does not exist. */
  'ERR_FILE_NOT_FOUND',
  /** A file exists but cannot be read (a directory, no permission, an I/O error). */
  'ERR_FILE_READ',
  /** A safetensors file's header is malformed or does not match the file. */
  'ERR_SAFETENSORS_HEADER',
  /** A model.safetensors.index.json is malformed. */
  'ERR_SAFETENSORS_INDEX',
  /** A tensor the model needs is not in the checkpoint. */
  'ERR_TENSOR_MISSING',
  /** A tensor's shape is not the one the config implies. */
  'ERR_TENSOR_SHAPE',
  /** A tensor's dtype cannot be used here. */
  'ERR_TENSOR_DTYPE',
  /** A tokenizer.json that cannot be loaded or used. */
  'ERR_TOKENIZER',
  /** A GGUF file that is malformed, truncated or does not match its own header (the message names the byte offset). */
  'ERR_GGUF',
  /** A process-group transport (Open MPI, NCCL) cannot be loaded on this machine; the message says why. */
  'ERR_DIST_UNAVAILABLE',
  /** A collective call failed (MPI returned an error: a peer rank exited or failed). */
  'ERR_DIST',
  /** A collective call did not complete within the process group's timeout (a peer is gone or stuck). */
  'ERR_DIST_TIMEOUT',
  /** The process group failed or timed out earlier and cannot be used again: exit the process. */
  'ERR_DIST_BROKEN',
  /** The serving engine's queue is full (maxQueued): try again later (the server answers 429). */
  'ERR_OVERLOADED',
] as const;

/** The code of a MoeError: one of MOE_ERROR_CODES. */
export type MoeErrorCode = (typeof MOE_ERROR_CODES)[number];

export class MoeError extends Error {
  readonly code: MoeErrorCode;
  constructor(message: string, code: MoeErrorCode);
  /** The form the native module calls (set_error_class), with a status name of MOE_ERROR_CODES. */
  constructor(message: string, code: string);
  constructor(message: string, code: string) {
    super(message);
    this.name = 'MoeError';
    this.code = code as MoeErrorCode;
  }
}

/** A TypeError with a Node-style code, naming the argument and the value it got. */
export function typeError(message: string): TypeError {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' });
}

/** A RangeError with a Node-style code. */
export function rangeError(message: string): RangeError {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' });
}

/**
 * The MoeError for a file that could not be opened or read: ERR_FILE_NOT_FOUND when it (or a
 * directory above it) does not exist, ERR_FILE_READ otherwise, a directory where a file should be
 * (EISDIR) included. The message names the file and what was being done.
 */
export function fileError(file: string, what: string, e: unknown): MoeError {
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 'EISDIR') return new MoeError(`${file}: ${what}: it is a directory, not a file`, 'ERR_FILE_READ');
  const detail = typeof code === 'string' ? code : ((e as Error | null)?.message ?? String(e));
  return new MoeError(`${file}: ${what} (${detail})`, code === 'ENOENT' || code === 'ENOTDIR' ? 'ERR_FILE_NOT_FOUND' : 'ERR_FILE_READ');
}

/**
 * A short rendering of a value for error messages. Arrays show their first elements to a depth of
 * three (deeper ones are `[...]`), so a value nested 20,000 levels deep (a hostile JSON header)
 * renders in constant time and stack.
 */
export function describe(v: unknown, depth = 0): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of length ${(v as unknown as ArrayLike<unknown>).length}`;
  if (Array.isArray(v)) {
    if (depth >= 3) return v.length === 0 ? '[]' : '[...]';
    return `[${v.slice(0, 6).map((e) => describe(e, depth + 1)).join(',')}${v.length > 6 ? ',...' : ''}]`;
  }
  if (typeof v === 'function') return 'a function';
  return 'an object';
}

/**
 * The package's error class. Native code throws it (with a `code`) for failures that are not a
 * plain wrong-type or out-of-range argument; those are TypeError / RangeError with a `code` too.
 *
 * Codes: ERR_DISPOSED, ERR_BACKEND_UNAVAILABLE, ERR_INVALID_ARGUMENT, ERR_OUT_OF_MEMORY,
 * ERR_UNSUPPORTED, ERR_INTERNAL.
 */
export class MoeError extends Error {
  readonly code: string;
  constructor(message: string, code: string) {
    super(message);
    this.name = 'MoeError';
    this.code = code;
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

/** A short rendering of a value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of length ${(v as unknown as ArrayLike<unknown>).length}`;
  if (Array.isArray(v)) return `[${v.slice(0, 6).map(describe).join(',')}${v.length > 6 ? ',...' : ''}]`;
  if (typeof v === 'function') return 'a function';
  return 'an object';
}

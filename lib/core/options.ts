/** Small checks for options objects, so that a bad option names itself and the value it got. */
import { describe, rangeError, typeError } from './errors.js';

export function checkOptions(options: unknown, name = 'options'): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw typeError(`${name} must be an object, got ${describe(options)}`);
  return options as Record<string, unknown>;
}

export function intOption(o: Record<string, unknown>, key: string, dflt: number, lo: number, hi = Number.MAX_SAFE_INTEGER, name = `options.${key}`): number {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw typeError(`${name} must be an integer, got ${describe(v)}`);
  if (v < lo || v > hi) throw rangeError(`${name} must be in [${lo}, ${hi}], got ${v}`);
  return v;
}

export function boolOption(o: Record<string, unknown>, key: string, dflt: boolean, name = `options.${key}`): boolean {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw typeError(`${name} must be a boolean, got ${describe(v)}`);
  return v;
}

/** The field `key` of a weights object, required. */
export function required<T>(o: unknown, key: string, name: string): T {
  if (o === null || typeof o !== 'object') throw typeError(`${name} must be an object, got ${describe(o)}`);
  const v = (o as Record<string, unknown>)[key];
  if (v === undefined || v === null) throw typeError(`${name}.${key} is required, got ${describe(v)}`);
  return v as T;
}

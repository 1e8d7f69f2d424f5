/**
 * Bad-input cases shared by the error tests: each must throw (Sync forms, constructors) or reject
 * (Promise forms) with the expected error class and code, and a message that names the argument
 * and contains the bad value. The Promise forms never throw synchronously: argument errors arrive
 * as rejections, with the same class, code and message as the Sync form.
 */
import * as assert from 'uvu/assert';
import type { MoeError } from '../../lib/index';

export type Cls = typeof TypeError | typeof RangeError | typeof MoeError;
export const TE = ['ERR_INVALID_ARG_TYPE', TypeError] as const;
export const RE = ['ERR_OUT_OF_RANGE', RangeError] as const;

export interface Case {
  name: string;
  /** the Sync form or constructor */
  sync?: () => unknown;
  /** the Promise form */
  async?: () => Promise<unknown>;
  cls: Cls;
  code: string;
  /** substrings the message must contain: the argument's name and the bad value */
  parts: string[];
}

export function checkError(err: unknown, c: Case, form: string): string {
  assert.ok(err !== undefined, `${c.name} (${form}): nothing was thrown`);
  assert.ok(err instanceof c.cls, `${c.name} (${form}): expected ${c.cls.name}, got ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
  const e = err as Error & { code?: string };
  assert.is(e.code, c.code, `${c.name} (${form}): code (message: ${e.message})`);
  for (const p of c.parts)
    assert.ok(e.message.includes(p), `${c.name} (${form}): message ${JSON.stringify(e.message)} should contain ${JSON.stringify(p)}`);
  return e.message;
}

export async function runCase(c: Case) {
  let syncMsg: string | undefined;
  if (c.sync) {
    let err: unknown;
    try {
      c.sync();
    } catch (e) {
      err = e;
    }
    syncMsg = checkError(err, c, 'sync');
  }
  if (c.async) {
    let p: Promise<unknown> | undefined;
    try {
      p = c.async();
    } catch (e) {
      assert.unreachable(`${c.name} (async): threw synchronously instead of rejecting: ${(e as Error).message}`);
    }
    assert.ok(p instanceof Promise, `${c.name} (async): did not return a Promise`);
    let err: unknown;
    try {
      await p;
    } catch (e) {
      err = e;
    }
    const asyncMsg = checkError(err, c, 'async');
    if (syncMsg !== undefined) assert.is(asyncMsg, syncMsg, `${c.name}: the async message differs from the sync one`);
  }
}


// The error vocabulary: MoeError.code is a union of the documented codes, every code the library
// throws (lib/ and native/) is one of them and is listed in the README, and the renderer of bad
// values in messages (describe) survives hostile input.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoeError } from '../lib/index';
import { describe, MOE_ERROR_CODES, type MoeErrorCode } from '../lib/core/errors';

const root = path.join(__dirname, '..');
const codes = suite('error codes');

/** Every file under dir (recursively) whose name matches. */
function files(dir: string, re: RegExp): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? files(p, re) : re.test(e.name) ? [p] : [];
  });
}

// The codes of TypeError / RangeError (Node's own names) and of the CLI's argument parser.
const NOT_MOE = new Set(['ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'ERR_PARSE_ARGS']);

codes('every code thrown in lib/ and native/ is in MOE_ERROR_CODES', () => {
  const found = new Map<string, string>();
  for (const f of [...files(path.join(root, 'lib'), /\.ts$/), ...files(path.join(root, 'native'), /\.(cc|h|cu)$/)])
    for (const m of fs.readFileSync(f, 'utf8').matchAll(/['"](ERR_[A-Z0-9_]+)['"]/g)) if (!NOT_MOE.has(m[1])) found.set(m[1], path.relative(root, f));
  assert.ok(found.size >= 10, `only ${found.size} codes found: the scan is broken`);
  const missing = [...found].filter(([c]) => !(MOE_ERROR_CODES as readonly string[]).includes(c)).map(([c, f]) => `${c} (${f})`);
  assert.equal(missing, [], 'codes thrown but not documented in lib/core/errors.ts');
});

codes('the README lists every code', () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  assert.equal(MOE_ERROR_CODES.filter((c) => !readme.includes(`\`${c}\``)), []);
});

codes('MoeError.code is the union, not string (checked by the type-check of the tests)', () => {
  const e = new MoeError('m', 'ERR_CONFIG');
  const code: MoeErrorCode = e.code;
  // @ts-expect-error: a code that is not documented is not a MoeErrorCode
  const bad: MoeError['code'] = 'ERR_NOT_A_CODE';
  assert.is(code, 'ERR_CONFIG');
  assert.is(bad, 'ERR_NOT_A_CODE');
  // narrowing on the code works as for any union
  if (e.code === 'ERR_CONFIG') assert.ok(true);
});

codes('describe() renders a value nested 20,000 levels deep, bounded in depth and width', () => {
  let v: unknown = [];
  for (let i = 0; i < 20_000; i++) v = [v];
  assert.is(describe(v), '[[[[...]]]]');
  assert.is(describe([1, [2, [3, [4, [5]]]]]), '[1,[2,[3,[...]]]]');
  assert.is(describe(Array.from({ length: 10 }, (_, i) => i)), '[0,1,2,3,4,5,...]');
  assert.is(describe([[], [[]], [[[]]], [[[[]]]]]), '[[],[[]],[[[]]],[[[...]]]]');
  assert.is(describe('x'.repeat(100)), JSON.stringify('x'.repeat(40) + '...'));
});

codes.run();

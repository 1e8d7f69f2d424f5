// The tests are TypeScript too: tsx runs them without checking types, so a test that no longer
// matches the API's types (or an @ts-expect-error that no longer expects anything) would pass
// unnoticed. This type-checks lib/ and test/ together with tsconfig.test.json.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const tc = suite('type-check');

tc('lib/ and test/ type-check (tsconfig.test.json)', () => {
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.test.json')], { cwd: root, encoding: 'utf8' });
  assert.is(r.status, 0, `tsc -p tsconfig.test.json:\n${r.stdout}${r.stderr}`);
});

tc('the check can fail: a test with a type error is reported', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-tc-'));
  try {
    fs.writeFileSync(path.join(dir, 'bad.test.ts'), `import { tensor } from '${path.join(root, 'lib', 'index')}';\nexport const n: number = tensor('float32', [1]);\n`);
    const compilerOptions = { rootDir: '/', typeRoots: [path.join(root, 'node_modules', '@types')] };
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ extends: path.join(root, 'tsconfig.test.json'), compilerOptions, include: ['*.ts'] }));
    const r = spawnSync(process.execPath, [tsc, '-p', dir], { cwd: dir, encoding: 'utf8' });
    assert.is.not(r.status, 0);
    assert.match(r.stdout, /bad\.test\.ts.*not assignable to type 'number'/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

tc.run();

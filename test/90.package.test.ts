// The package as users load it, from a consumer folder whose node_modules/moe-kernels links to
// this checkout: CommonJS and ES module entries expose the same API and one native instance, and
// a consumer's TypeScript accepts the published types.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const pkg = suite<{ dir: string }>('package', { dir: '' });

pkg.before((ctx) => {
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-consumer-'));
  fs.mkdirSync(path.join(ctx.dir, 'node_modules'));
  fs.symlinkSync(root, path.join(ctx.dir, 'node_modules', 'moe-kernels'));
  fs.symlinkSync(path.join(root, 'node_modules', '@types'), path.join(ctx.dir, 'node_modules', '@types'));
  fs.writeFileSync(path.join(ctx.dir, 'package.json'), '{"name":"consumer","private":true}');
  for (const f of ['consumer.mts', 'consumer.cts']) fs.copyFileSync(path.join(__dirname, 'fixtures', f), path.join(ctx.dir, f));
});
pkg.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

pkg('dist is built (npm install runs prepare)', () => {
  for (const f of ['index.js', 'index.d.ts', 'index.mjs', 'index.d.mts'])
    assert.ok(fs.existsSync(path.join(root, 'dist', f)), `dist/${f} missing: run npm run build:ts`);
});

pkg('require and import give the same exports and the same native module', (ctx) => {
  const script = `
    const cjs = require('moe-kernels');
    import('moe-kernels').then((esm) => {
      const a = Object.keys(cjs).sort().join(','), b = Object.keys(esm).filter((k) => k !== 'default').sort().join(',');
      if (a !== b) throw new Error('exports differ: ' + a + ' vs ' + b);
      if (esm.MoeLayer !== cjs.MoeLayer) throw new Error('two instances of the API');
      console.log('ok ' + Object.keys(cjs).length);
    });`;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: ctx.dir, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ok \d+/);
});

pkg('a TypeScript consumer type-checks against the published types (ESM and CJS)', (ctx) => {
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const args = ['--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--types', 'node'];
  const r = spawnSync(process.execPath, [tsc, ...args, 'consumer.mts', 'consumer.cts'], { cwd: ctx.dir, encoding: 'utf8' });
  assert.is(r.status, 0, r.stdout + r.stderr);
});

pkg('the types compile in a fresh TypeScript project without @types/node, with any lib', (ctx) => {
  // A consumer who never installed @types/node (a browser-minded or Deno-minded TS setup, or a plain
  // `tsc --init`): the published .d.ts files must not name the NodeJS namespace, Buffer or node:
  // modules. skipLibCheck is off so that errors inside our .d.ts files count.
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const bare = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bare-'));
  try {
    fs.mkdirSync(path.join(bare, 'node_modules'));
    fs.symlinkSync(root, path.join(bare, 'node_modules', 'moe-kernels'));
    fs.writeFileSync(path.join(bare, 'package.json'), '{"name":"bare","private":true}');
    for (const f of ['consumer.mts', 'consumer.cts']) fs.copyFileSync(path.join(__dirname, 'fixtures', f), path.join(bare, f));
    for (const lib of ['es2022', 'esnext']) {
      const args = ['--noEmit', '--strict', '--skipLibCheck', 'false', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--lib', lib];
      // --types with an empty list: no @types package at all (there is none here anyway)
      fs.writeFileSync(path.join(bare, 'tsconfig.json'), JSON.stringify({ compilerOptions: { types: [] }, files: ['consumer.mts', 'consumer.cts'] }));
      const r = spawnSync(process.execPath, [tsc, '-p', '.', ...args], { cwd: bare, encoding: 'utf8' });
      assert.is(r.status, 0, `lib ${lib}:\n${r.stdout}${r.stderr}`);
    }
    // and with @types/node beside them (its own declarations of the same globals must not clash)
    fs.symlinkSync(path.join(root, 'node_modules', '@types'), path.join(bare, 'node_modules', '@types'));
    fs.writeFileSync(path.join(bare, 'tsconfig.json'), JSON.stringify({ compilerOptions: { types: ['node'] }, files: ['consumer.mts', 'consumer.cts'] }));
    for (const lib of ['es2022', 'esnext']) {
      const r = spawnSync(process.execPath, [tsc, '-p', '.', '--noEmit', '--strict', '--skipLibCheck', 'false', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--lib', lib], { cwd: bare, encoding: 'utf8' });
      assert.is(r.status, 0, `@types/node, lib ${lib}:\n${r.stdout}${r.stderr}`);
    }
  } finally {
    fs.rmSync(bare, { recursive: true, force: true });
  }
});

/** The files `npm pack` would put in the tarball (without running prepack). */
let packed: string[] | undefined;
function packedFiles(): string[] {
  if (packed) return packed;
  const npmCli = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');
  const r = spawnSync(process.execPath, [npmCli, 'pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: root, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  return (packed = (JSON.parse(r.stdout)[0].files as { path: string }[]).map((f) => f.path));
}

pkg('the package has a LICENSE (MIT, as package.json says) and a repository', () => {
  const meta = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  assert.is(meta.license, 'MIT');
  assert.match(fs.readFileSync(path.join(root, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) \d{4} .+\n\nPermission is hereby granted, free of charge/);
  assert.is(meta.repository?.type, 'git');
  assert.match(meta.repository?.url ?? '', /^git\+https:\/\/.+\.git$/);
  assert.ok(packedFiles().includes('LICENSE'));
});

pkg('links in the README point inside the package, at files it ships', () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const files = new Set(packedFiles());
  const anchors = new Set([...readme.matchAll(/^#+ (.+)$/gm)].map((m) => m[1].toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')));
  const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]);
  assert.ok(links.length > 0);
  for (const l of links) {
    if (l.startsWith('#')) assert.ok(anchors.has(l.slice(1)), `README link ${l}: no such heading`);
    else {
      assert.not.match(l, /^[a-z]+:|^\/|(^|\/)\.\.\//, `README link ${l} points outside the package`);
      assert.ok(files.has(path.posix.normalize(l)), `README link ${l}: not in the package's files`);
    }
  }
  // no path outside the package in the text either (e.g. the development checkout's ../shared/)
  assert.not.match(readme, /\.\.\/shared\//);
});

pkg('the source maps in the package carry their sources (lib/ is not shipped)', () => {
  const files = packedFiles();
  const maps = files.filter((f) => f.endsWith('.map'));
  assert.ok(maps.length > 10, `${maps.length} maps`);
  for (const m of maps) {
    const map = JSON.parse(fs.readFileSync(path.join(root, m), 'utf8')) as { sources: string[]; sourcesContent?: (string | null)[] };
    map.sources.forEach((src, i) => {
      const shipped = files.includes(path.posix.join(path.posix.dirname(m), src));
      assert.ok(shipped || typeof map.sourcesContent?.[i] === 'string', `${m}: source ${src} is neither shipped nor inlined`);
    });
  }
});

pkg('a type error in a consumer is reported (the check above can fail)', (ctx) => {
  fs.writeFileSync(path.join(ctx.dir, 'bad.mts'), "import { tensor } from 'moe-kernels';\nconst n: number = tensor('float32', [1]);\n");
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--types', 'node', 'bad.mts'], { cwd: ctx.dir, encoding: 'utf8' });
  assert.is.not(r.status, 0);
  assert.match(r.stdout, /not assignable/);
});

pkg.run();

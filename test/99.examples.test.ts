// The README's snippets are files of examples/, and each runs: every ```js block of the README is
// preceded by `<!-- example: examples/<file>[#region] -->` and is that file (or that region of it)
// verbatim, and `node examples/<file>` succeeds (CommonJS without top-level await, ES modules with
// it), the checkpoint and model examples on a tiny checkpoint, the device example on the emulated
// CUDA backend when the test build is there, the server on a free loopback port.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { convertToGguf } from '../lib/index';
import { tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { tinyTokenizerJson } from './helpers/tokenizers';

const root = path.join(__dirname, '..');
const examples = path.join(root, 'examples');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');

/** The text a README block quotes: the whole file, or the dedented lines between `// #region name` and `// #endregion`. */
function quoted(ref: string): string {
  const [file, region] = ref.split('#');
  const text = fs.readFileSync(path.join(root, file), 'utf8');
  if (!region) return text;
  const m = text.match(new RegExp(`// #region ${region}\\n([\\s\\S]*?\\n)\\s*// #endregion`));
  assert.ok(m, `${file} has no region ${region}`);
  const lines = m![1].split('\n');
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => l.match(/^ */)![0].length));
  return lines.map((l) => l.slice(indent)).join('\n');
}

const ex = suite<{ dir: string }>('examples', { dir: '' });
ex.before(async (ctx) => {
  ctx.dir = tmpDir('moe-examples-');
  // the token ids the model example uses (1, 415, 2936, 9060) need a vocabulary of 32000, as Mixtral's
  await writeTinyMixtral(ctx.dir, { raw: tinyMixtralRaw({ vocab_size: 32000, torch_dtype: 'bfloat16' }), dtype: 'bfloat16' });
});
ex.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

ex('every js block of the README is an example file, verbatim, and every example is in the README', () => {
  const blocks = [...readme.matchAll(/(?:<!-- example: (\S+) -->\n)?```js\n([\s\S]*?)```\n/g)];
  assert.ok(blocks.length >= 7, `${blocks.length} js blocks`);
  for (const [, ref, body] of blocks) {
    assert.ok(ref, `a js block without an <!-- example: --> file:\n${body.slice(0, 200)}`);
    assert.fixture(body, quoted(ref), `${ref}: the README's block differs from the file`);
  }
  const cited = new Set([...readme.matchAll(/examples\/([\w.-]+)/g)].map((m) => m[1]));
  for (const f of fs.readdirSync(examples)) assert.ok(cited.has(f), `examples/${f} is not in the README`);
});

// uvu sets FORCE_COLOR, which would colour the numbers console.log prints
const plain = { FORCE_COLOR: '0', NO_COLOR: '1' };
const run = (file: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [path.join(examples, file), ...args], { cwd: root, encoding: 'utf8', timeout: 300_000, env: { ...process.env, ...plain, ...env } });

for (const file of ['moe-layer.cjs', 'moe-layer.mjs', 'shared-experts.mjs', 'decode-step.mjs'])
  ex(`node examples/${file}`, () => {
    const r = run(file);
    assert.is(r.status, 0, r.stderr);
    assert.ok(r.stdout.length > 0);
  });

ex('the CommonJS examples have no top-level await (it is a SyntaxError there)', () => {
  for (const f of fs.readdirSync(examples).filter((n) => n.endsWith('.cjs'))) {
    const r = spawnSync(process.execPath, ['--check', path.join(examples, f)], { encoding: 'utf8' });
    assert.is(r.status, 0, `${f}: ${r.stderr}`);
  }
  // the check can fail
  const bad = path.join(tmpDir('moe-cjs-'), 'bad.cjs');
  fs.writeFileSync(bad, "const x = await Promise.resolve(1);\n");
  assert.is.not(spawnSync(process.execPath, ['--check', bad], { encoding: 'utf8' }).status, 0);
  fs.rmSync(path.dirname(bad), { recursive: true, force: true });
});

ex('node examples/checkpoint.mjs <dir> and examples/model.mjs <dir> on a tiny Mixtral checkpoint', ({ dir }) => {
  const c = run('checkpoint.mjs', [dir]);
  assert.is(c.status, 0, c.stderr);
  assert.match(c.stdout, /^2 layers; embeddings 32000,64, norm 64, lm_head 32000,64$/m);
  const m = run('model.mjs', [dir]);
  assert.is(m.status, 0, m.stderr);
  assert.match(m.stdout, /^\[ 3, 32000 \] \[ 1, 32000 \]$/m);
});

ex('node examples/gguf.mjs <file> on a tiny Mixtral converted to GGUF, with its tokenizer and chat template', async ({ dir }) => {
  const src = path.join(dir, 'gguf-src');
  await writeTinyMixtral(src, { raw: tinyMixtralRaw({ vocab_size: 277 }) });
  fs.writeFileSync(path.join(src, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(src, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', chat_template: '{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}' }));
  const file = path.join(dir, 'tiny.gguf');
  await convertToGguf(src, file, { type: 'f16', name: 'tiny' });
  const r = run('gguf.mjs', [file]);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^llama "tiny" 23 tensors$/m);
  assert.match(r.stdout, /^".*" \(\d+ tokens, (eos|length)\)$/m);
});

ex('node examples/device.mjs on the emulated CUDA backend (the test build), else it says there is none', () => {
  const emu = path.join(root, 'build-emu', 'Release', 'moe_kernels.node');
  if (!fs.existsSync(emu)) {
    const r = run('device.mjs');
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, /no CUDA backend here|toDevice/);
    console.log('99.examples: no build-emu/ (npm test builds it after this pass): the device example ran on what this build has');
    return;
  }
  const r = run('device.mjs', [], { MOE_KERNELS_ADDON: emu });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^\[ 4, 128 \] \[ 2, 8, 8 \] \{/m);
  assert.match(r.stdout, /toDevice/);
});

ex('examples/server.cjs streams text from the engine on a loopback port, 400 for bad input, 404 elsewhere, and stops on SIGTERM', async () => {
  const child = spawn(process.execPath, [path.join(examples, 'server.cjs')], { cwd: root, env: { ...process.env, PORT: '0' } });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (b) => {
        out += b;
        const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\/generate/);
        if (m) resolve(Number(m[1]));
      });
      child.stderr.on('data', (b) => (out += b));
      child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
    });
    const post = (route: string, body: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, path: route, method: 'POST' }, (res) => {
          let s = '';
          res.on('data', (c) => (s += c)).on('end', () => resolve({ status: res.statusCode!, text: s }));
        });
        req.on('error', reject);
        req.end(body);
      });
    const ok = await post('/generate', JSON.stringify({ prompt: 'Hello', maxTokens: 5 }));
    assert.is(ok.status, 200);
    assert.match(ok.text, /\[length: 5 tokens\]\n$/);
    const chat = await post('/generate', JSON.stringify({ prompt: [{ role: 'user', content: 'Hi' }], maxTokens: 3, temperature: 0.8, seed: 1 }));
    assert.match(chat.text, /\[length: 3 tokens\]/);
    const bad = await post('/generate', JSON.stringify({ prompt: 42 }));
    assert.is(bad.status, 400);
    assert.match(JSON.parse(bad.text).error, /prompt must be a string/);
    assert.is((await post('/generate', '{nope')).status, 400);
    assert.is((await post('/elsewhere', '{}')).status, 404);
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    assert.is(await exited, 0);
  } finally {
    if (child.exitCode === null) child.kill();
  }
});

ex.run();

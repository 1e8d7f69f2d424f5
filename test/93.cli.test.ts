// The moe-kernels command as users run it (bin/moe-kernels.js on the built dist/, in a child
// process): params, inspect and generate, --help, exit codes 0 / 1 (failed) / 2 (usage). And the
// progress display the CLI's loaders use, on a fake terminal and a fake log.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createProgressBar, MixtralModel, tensor, Tokenizer, writeSafetensors, type LoadProgress } from '../lib/index';
import { mixtral8x7bRaw, tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { tinyTokenizerJson } from './helpers/tokenizers';

const root = path.join(__dirname, '..');
const bin = path.join(root, 'bin', 'moe-kernels.js');
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

const cli = suite<{ dir: string }>('cli', { dir: '' });
cli.before((ctx) => {
  ctx.dir = tmpDir('moe-cli-');
  fs.writeFileSync(path.join(ctx.dir, 'mixtral-8x7b.json'), JSON.stringify(mixtral8x7bRaw()));
});
cli.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

cli('the package declares the bin and ships it; dist/cli/cli.js is built', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  assert.is(pkg.bin['moe-kernels'], 'bin/moe-kernels.js');
  assert.ok(pkg.files.includes('bin'));
  assert.ok(fs.existsSync(path.join(root, 'dist', 'cli', 'cli.js')), 'dist/cli/cli.js missing: run npm run build:ts');
  assert.match(fs.readFileSync(bin, 'utf8'), /^#!\/usr\/bin\/env node/);
});

cli('--help for the command and each subcommand; no command is a usage error', () => {
  const main = run('--help');
  assert.is(main.code, 0);
  assert.match(main.out, /Usage: moe-kernels <command>/);
  assert.match(main.out, /params/);
  assert.match(main.out, /inspect/);
  for (const c of ['params', 'inspect', 'generate']) {
    const r = run(c, '--help');
    assert.is(r.code, 0, r.err);
    assert.match(r.out, new RegExp(`Usage: moe-kernels ${c}`));
  }
  assert.is(run().code, 2);
  const u = run('frobnicate');
  assert.is(u.code, 2);
  assert.match(u.err, /unknown command 'frobnicate'/);
});

cli('params: the Mixtral-8x7B table with exact totals and a memory estimate', ({ dir }) => {
  const r = run('params', path.join(dir, 'mixtral-8x7b.json'), '--context', '4096', '--batch', '2');
  assert.is(r.code, 0, r.err);
  assert.match(r.out, /mixtral: 32 layers \(32 MoE\), hidden 4096/);
  assert.match(r.out, /experts\s+45,097,156,608\s+45\.10B\s+11,274,289,152\s+11\.27B/);
  assert.match(r.out, /all\s+46,702,792,704\s+46\.70B\s+12,879,925,248\s+12\.88B/);
  assert.match(r.out, /KV cache \(bfloat16, 4096 tokens x 2\)\s+1,073,741,824/);
});

cli('params --json gives the same numbers to a program; a checkpoint dir finds its config.json', async ({ dir }) => {
  const r = run('params', path.join(dir, 'mixtral-8x7b.json'), '--json', '--dtype', 'float32');
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.is(j.parameters.total, 46_702_792_704);
  assert.is(j.parameters.active, 12_879_925_248);
  assert.is(j.memory.weightsBytes, 46_702_792_704 * 4);
  assert.is(j.config.hiddenSize, 4096);
  const d = path.join(dir, 'tiny');
  await writeTinyMixtral(d);
  const t = run('params', d, '--json');
  assert.is(t.code, 0, t.err);
  assert.is(JSON.parse(t.out).config.numExperts, 4);
});

cli('params: bad flags are usage errors (2), a bad config a failure (1), each with a message', ({ dir }) => {
  const cfg = path.join(dir, 'mixtral-8x7b.json');
  for (const [args, pattern] of [
    [['--dtype', 'int8'], /--dtype must be one of float32, float16, bfloat16, got 'int8'/],
    [['--context=0'], /--context must be a positive integer, got '0'/],
    [['--bogus'], /Unknown option '--bogus'/],
  ] as const) {
    const r = run('params', cfg, ...args);
    assert.is(r.code, 2, r.out);
    assert.match(r.err, pattern);
  }
  assert.is(run('params').code, 2);
  const missing = run('params', path.join(dir, 'nope.json'));
  assert.is(missing.code, 1);
  assert.match(missing.err, /nope\.json: cannot read config \(ENOENT\) \(ERR_FILE_NOT_FOUND\)/);
  const badCfg = path.join(dir, 'bad.json');
  fs.writeFileSync(badCfg, JSON.stringify({ ...mixtral8x7bRaw(), num_key_value_heads: 5 }));
  const b = run('params', badCfg);
  assert.is(b.code, 1);
  assert.match(b.err, /num_attention_heads \(32\) must be a multiple of num_key_value_heads \(5\)/);
  assert.not.match(b.err, /\n\s+at /); // a message, not a stack
});

cli('inspect: lists every tensor and checks the checkpoint against config.json', async ({ dir }) => {
  const d = path.join(dir, 'packed');
  await writeTinyMixtral(d, { layout: 'packed', maxShardBytes: 150_000 });
  const r = run('inspect', d);
  assert.is(r.code, 0, r.err);
  assert.match(r.out, /model\.layers\.1\.mlp\.experts\.gate_up_proj\s+F32\s+\[4,96,64\]\s+98,304\s+model-0000\d-of-0000\d\.safetensors/);
  assert.match(r.out, /lm_head\.weight\s+F32\s+\[97,64\]\s+24,832/);
  assert.match(r.out, /21 tensors in \d files/);
  assert.match(r.out, /ok: all 21 tensors that config\.json implies are present with the expected shapes \(expert layout: packed;/);
  const j = JSON.parse(run('inspect', d, '--json').out);
  assert.is(j.tensors.length, 21);
  assert.is(j.check.ok, true);
  assert.equal(j.tensors.find((t: { name: string }) => t.name === 'model.norm.weight').shape, [64]);
});

cli('inspect: a mis-shaped tensor fails (1) naming it; a single file works; --no-check only lists', async ({ dir }) => {
  const d = path.join(dir, 'bad-shape');
  await writeTinyMixtral(d, { edit: (t) => (t['model.layers.0.self_attn.o_proj.weight'] = { ...t['model.layers.0.self_attn.o_proj.weight'], dims: [32, 128] }) });
  const r = run('inspect', d);
  assert.is(r.code, 1);
  assert.match(r.out, /model\.layers\.0\.self_attn\.o_proj\.weight\s+F32\s+\[32,128\]/);
  assert.match(r.err, /error: .*model\.safetensors: tensor 'model\.layers\.0\.self_attn\.o_proj\.weight' has shape \[32,128\], expected \[64,64\]/);
  assert.is(run('inspect', d, '--no-check').code, 0);
  const single = run('inspect', path.join(d, 'model.safetensors'), '--no-check');
  assert.is(single.code, 0, single.err);
  assert.match(single.out, /in 1 file,/);
  const corrupt = path.join(dir, 'corrupt.safetensors');
  fs.writeFileSync(corrupt, Buffer.from([1, 0, 0, 0]));
  const c = run('inspect', corrupt);
  assert.is(c.code, 1);
  assert.match(c.err, /corrupt\.safetensors: invalid safetensors header: .* \(ERR_SAFETENSORS_HEADER\)/);
});

cli('generate: token ids as they come, the greedy tokens of MixtralModel; --stats; progress on stderr', async ({ dir }) => {
  const d = path.join(dir, 'gen');
  await writeTinyMixtral(d, { layout: 'packed' });
  const svg = path.join(dir, 'routing.svg');
  const r = run('generate', d, '--prompt-ids', '5,17,3', '--max-new-tokens', '6', '--stats', '--stats-svg', svg);
  assert.is(r.code, 0, r.err);
  const model = await MixtralModel.load(d);
  const want = await model.generateAll([5, 17, 3], { maxNewTokens: 6 });
  const lines = r.out.split('\n');
  assert.is(lines[0], want.join(' '));
  assert.match(r.out, /tokens per expert \(8 tokens through the model\):\n\s+e0\s+e1\s+e2\s+e3\s+total\s+entropy\s+even\n[- ]+\nlayer 0(\s+\d+){4}\s+16\s+[\d.]+\s+[\d.]+%\nlayer 1/);
  const text = fs.readFileSync(svg, 'utf8');
  assert.match(text, /<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.is((text.match(/<rect class="cell"/g) ?? []).length, 2 * 4, 'one cell per layer and expert');
  assert.match(r.err, /routing heat map: .*routing\.svg/);
  assert.match(r.err, /loading 100% .* tensors 21\/21/);
  assert.match(r.err, /6 tokens; prefill 3 tokens in [\d.]+ s, decode [\d.]+ tokens\/s/);
  // sampling flags reach the sampler: the same seed gives the same tokens as the library
  const s = run('generate', d, '--prompt-ids=5,17,3', '--max-new-tokens=6', '--temperature=1.2', '--top-p=0.9', '--seed=4', '--dtype=bfloat16', '--no-progress');
  assert.is(s.code, 0, s.err);
  const bf = await MixtralModel.load(d, { dtype: 'bfloat16' });
  assert.is(s.out.trim(), (await bf.generateAll([5, 17, 3], { maxNewTokens: 6, temperature: 1.2, topP: 0.9, seed: 4 })).join(' '));
  assert.not.match(s.err, /loading/);
  model.dispose();
  bf.dispose();
});

cli('generate: text in and out with the checkpoint\'s tokenizer.json, stopping at </s>', async ({ dir }) => {
  const d = path.join(dir, 'gen-text');
  await writeTinyMixtral(d, { raw: tinyMixtralRaw({ vocab_size: 277 }), seed: 3 });
  fs.writeFileSync(path.join(d, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(d, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }));
  const r = run('generate', d, '--prompt', 'hello world', '--max-new-tokens', '12', '--no-progress');
  assert.is(r.code, 0, r.err);
  const tok = Tokenizer.fromFile(d);
  const model = await MixtralModel.load(d);
  const ids = await model.generateAll(tok.encode('hello world'), { maxNewTokens: 12, stopTokens: [2] });
  assert.is(r.out, tok.decode(ids, { skipSpecialTokens: true }) + '\n');
  assert.match(r.err, /prompt: 3 tokens/);
  model.dispose();
});

cli('GGUF: convert writes a file; inspect lists metadata and tensor types; params counts it; generate runs it as the checkpoint', async ({ dir }) => {
  const d = path.join(dir, 'gguf-src');
  await writeTinyMixtral(d, { raw: tinyMixtralRaw({ vocab_size: 277 }), seed: 3 });
  fs.writeFileSync(path.join(d, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(d, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }));
  const file = path.join(dir, 'tiny.gguf');
  const c = run('convert', d, file, '--type', 'f32');
  assert.is(c.code, 0, c.err);
  assert.match(c.err, /wrote .*tiny\.gguf: llama, 23 tensors/);
  const i = run('inspect', file);
  assert.is(i.code, 0, i.err);
  assert.match(i.out, /GGUF version 3/);
  assert.match(i.out, /string\s+general\.architecture\s+"llama"/);
  assert.match(i.out, /\[string\]\s+tokenizer\.ggml\.tokens\s+\["<unk>", "<s>", "<\/s>", "<0x00>", "<0x01>", \.\.\. \(277 items\)\]/);
  assert.match(i.out, /blk\.0\.ffn_gate_exps\.weight\s+F32\s+64 x 48 x 4/);
  assert.match(i.out, /^ok: architecture llama: all 23 tensors/m);
  const j = JSON.parse(run('inspect', file, '--json').out);
  assert.equal([j.version, j.tensors.length, j.metadata.find((m: { key: string }) => m.key === 'llama.expert_count').value], [3, 23, 4]);
  const p = run('params', file, '--json');
  assert.is(p.code, 0, p.err);
  assert.is(JSON.parse(p.out).parameters.total, JSON.parse(run('params', d, '--json').out).parameters.total);
  const g1 = run('generate', d, '--prompt', 'hello world', '--max-new-tokens', '8', '--no-progress');
  const g2 = run('generate', file, '--prompt', 'hello world', '--max-new-tokens', '8', '--no-progress');
  assert.is(g2.code, 0, g2.err);
  assert.is(g2.out, g1.out);
  const ids = run('generate', file, '--prompt-ids', '1,5,9', '--max-new-tokens', '5', '--no-progress');
  assert.is(ids.out, run('generate', d, '--prompt-ids', '1,5,9', '--max-new-tokens', '5', '--no-progress').out);
  // a quantised file: its matrices in q8_0 (the tiny model's f = 48 rows of w2 fall back to F16)
  const q8 = run('convert', d, path.join(dir, 'q.gguf'), '--type', 'q8_0');
  assert.is(q8.code, 0, q8.err);
  const qi = run('inspect', path.join(dir, 'q.gguf'));
  assert.is(qi.code, 0, qi.err);
  assert.match(qi.out, /Q8_0/);
  // refusals: a bad --type or output name (2), a corrupt file (1)
  assert.is(run('convert', d, path.join(dir, 'q.gguf'), '--type', 'q3').code, 2);
  assert.is(run('convert', d, path.join(dir, 'q.bin')).code, 2);
  const bad = path.join(dir, 'bad.gguf');
  fs.writeFileSync(bad, fs.readFileSync(file).subarray(0, 1000));
  const b = run('inspect', bad);
  assert.is(b.code, 1);
  assert.match(b.err, /invalid GGUF file at byte \d+.*\(ERR_GGUF\)/);
});

cli('generate: usage errors (2) and failures (1) with a message', async ({ dir }) => {
  const d = path.join(dir, 'gen-err');
  await writeTinyMixtral(d);
  for (const [args, pattern] of [
    [[d], /give one of --prompt-ids, --prompt and --chat/],
    [[d, '--prompt-ids', '1,x'], /--prompt-ids must be comma-separated token ids, got '1,x'/],
    [[d, '--prompt-ids', '1', '--max-new-tokens', '0'], /--max-new-tokens must be a positive integer, got '0'/],
    [[d, '--prompt-ids', '1', '--temperature', 'hot'], /--temperature must be a number, got 'hot'/],
    [[d, '--prompt-ids', '1', '--backend', 'tpu'], /--backend must be one of auto, cpu, cuda, got 'tpu'/],
    [['--prompt-ids', '1'], /generate takes one argument: a checkpoint directory/],
  ] as const) {
    const r = run('generate', ...args);
    assert.is(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, pattern);
  }
  for (const [args, pattern] of [
    [[d, '--prompt', 'hi'], /no tokenizer\.json for --prompt or --chat; give token ids with --prompt-ids \(ERR_FILE_NOT_FOUND\)/],
    [[path.join(dir, 'nowhere'), '--prompt-ids', '1'], /nowhere/],
  ] as const) {
    const r = run('generate', ...args);
    assert.is(r.code, 1, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, pattern);
    assert.not.match(r.err, /\n\s+at /);
  }
});

cli('generate: options are checked before the model loads (a checkpoint with no weights), usage errors exit 2', async ({ dir }) => {
  // Only config.json: loading would fail (ERR_FILE_NOT_FOUND, exit 1), so exit 2 and the option's
  // message show that the check came first. On Mixtral, loading reads 93 GB.
  const d = path.join(dir, 'gen-noweights');
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(tinyMixtralRaw()));
  for (const [args, pattern] of [
    [['--prompt-ids', '1', '--top-p', '2'], /--top-p must be in \(0, 1\], got '2'/],
    [['--prompt-ids', '1', '--top-p', '0'], /--top-p must be in \(0, 1\], got '0'/],
    [['--prompt-ids', '1', '--temperature=-1'], /--temperature must be a finite number >= 0, got '-1'/],
    [['--prompt-ids', '1', '--temperature', 'Infinity'], /--temperature must be a finite number >= 0, got 'Infinity'/],
    [['--prompt-ids', '1,97'], /--prompt-ids: 97 is not a token id of this model \(vocab_size 97\)/],
    [['--prompt-ids', '1', '--stop-ids', '2,1000'], /--stop-ids: 1000 is not a token id of this model \(vocab_size 97\)/],
    [['--prompt-ids', '1,2,3', '--max-new-tokens', '8', '--max-seq', '4'], /--max-seq 4 is too small for 3 prompt tokens and 8 new tokens \(needs 10\)/],
    [['--prompt-ids', '1', '--stats-svg', path.join(dir, 'no', 'such', 'dir', 'r.svg')], /--stats-svg: the directory .*no\/such\/dir does not exist/],
    [['--prompt-ids', '1', '--stats-svg', dir], /--stats-svg: .* is a directory/],
  ] as const) {
    const r = run('generate', d, ...args);
    assert.is(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, pattern);
    assert.not.match(r.err, /loading\s+(\[|\d+%)|\n\s+at /);
  }
  // with valid options the same checkpoint gets as far as loading, and fails there (1)
  const ok = run('generate', d, '--prompt-ids', '1');
  assert.is(ok.code, 1, ok.err);
  assert.match(ok.err, /ERR_FILE_NOT_FOUND/);
});

cli('generate --json: one JSON object with the prompt, the new tokens (the same as without --json), why it stopped, timings', async ({ dir }) => {
  const d = path.join(dir, 'gen-json');
  await writeTinyMixtral(d, { seed: 5 });
  const plain = run('generate', d, '--prompt-ids', '5,17,3', '--max-new-tokens', '5', '--no-progress');
  assert.is(plain.code, 0, plain.err);
  const r = run('generate', d, '--prompt-ids', '5,17,3', '--max-new-tokens', '5', '--json', '--stats', '--no-progress');
  assert.is(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.equal(j.promptIds, [5, 17, 3]);
  assert.is(j.tokens.join(' '), plain.out.trim());
  assert.is(j.stopReason, 'length');
  assert.is(j.backend, 'cpu');
  for (const k of ['loadSeconds', 'prefillSeconds']) assert.type(j.timings[k], 'number');
  assert.equal(j.routing.layers, [0, 1]);
  assert.is(j.routing.tokensPerExpert.length, 2);
  assert.is(j.routing.tokens, 3 + 5 - 1);
  // a stop token ends it and says so
  const stop = run('generate', d, '--prompt-ids', '5,17,3', '--max-new-tokens', '5', '--stop-ids', String(j.tokens[1]), '--json', '--no-progress');
  const js = JSON.parse(stop.out);
  assert.is(js.stopReason, 'stop');
  assert.equal(js.tokens, j.tokens.slice(0, j.tokens.indexOf(j.tokens[1]) + 1));
  assert.not.ok('routing' in js, 'routing only with --stats');
});

cli('--version prints the package version', () => {
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  for (const flag of ['--version', '-v']) {
    const r = run(flag);
    assert.is(r.code, 0, r.err);
    assert.is(r.out, `${version}\n`);
  }
  assert.match(run('--help').out, /--version/);
});

cli('inspect | head -3: exits quietly when the reader goes away (EPIPE)', async ({ dir }) => {
  // ~3000 tensors: a table much larger than a pipe's buffer, as a real Mixtral's (~1000 tensors, sharded)
  const d = path.join(dir, 'many');
  fs.mkdirSync(d);
  const tensors: Record<string, ReturnType<typeof tensor>> = {};
  for (let i = 0; i < 3000; i++) tensors[`model.layers.${i}.block_sparse_moe.experts.0.w1.weight`] = tensor('float32', [i], [1]);
  await writeSafetensors(path.join(d, 'model.safetensors'), tensors);
  for (const json of [false, true]) {
    const r = spawnSync('bash', ['-c', `"${process.execPath}" "${bin}" inspect "${d}"${json ? ' --json' : ''} | head -3; echo "status \${PIPESTATUS[0]}" >&2`], { encoding: 'utf8' });
    assert.is(r.stdout.split('\n').length, 4, r.stdout);
    assert.is(r.stderr, 'status 0\n', `${json ? '--json' : 'table'}: ${r.stderr}`);
  }
});

cli('one-line messages, no stack traces: deep JSON, a directory for a file', async ({ dir }) => {
  const deep = path.join(dir, 'deep.json');
  fs.writeFileSync(deep, JSON.stringify(tinyMixtralRaw()).replace('"sliding_window":null', `"sliding_window":${'['.repeat(20_000)}${']'.repeat(20_000)}`));
  const r = run('params', deep);
  assert.is(r.code, 1, r.err);
  assert.match(r.err, /^moe-kernels params: .*deep\.json: sliding_window must be an integer, got \[\[\[\[\.\.\.\]\]\]\] \(ERR_CONFIG\)\n$/);
  const d = path.join(dir, 'dir-as-file');
  fs.mkdirSync(path.join(d, 'model.safetensors'), { recursive: true });
  const i = run('inspect', d);
  assert.is(i.code, 1, i.err);
  assert.match(i.err, /^moe-kernels inspect: .*model\.safetensors: cannot open: it is a directory, not a safetensors file \(ERR_FILE_READ\)\n$/);
  fs.mkdirSync(path.join(d, 'config.json'));
  const p = run('params', d);
  assert.is(p.code, 1, p.err);
  assert.match(p.err, /^moe-kernels params: .*config\.json: cannot read config: it is a directory, not a file \(ERR_FILE_READ\)\n$/);
});

cli.run();

const progress = suite('progress bar');

class FakeStream {
  chunks: string[] = [];
  constructor(
    readonly isTTY: boolean,
    readonly columns = 100,
  ) {}
  write(s: string) {
    this.chunks.push(s);
    return true;
  }
}

const steps = (n: number, bytesEach: number): LoadProgress[] =>
  Array.from({ length: n }, (_, i) => ({ bytesLoaded: (i + 1) * bytesEach, bytesTotal: n * bytesEach, tensorsLoaded: i + 1, tensorsTotal: n, name: `t${i}` }));

progress('terminal: redraws one line in place, ends at 100% and a newline', () => {
  const s = new FakeStream(true);
  const bar = createProgressBar({ stream: s, label: 'mixtral' });
  for (const p of steps(50, 2_000_000)) bar.update(p);
  bar.done();
  const out = s.chunks.join('');
  assert.ok(s.chunks.slice(0, -1).every((c) => c.startsWith('\r') && !c.includes('\n')));
  assert.ok(s.chunks.length < 50, 'redraws are throttled');
  assert.match(out, /\rmixtral \[#{40}\] 100% 100 MB \/ 100 MB, tensors 50\/50\x1b\[K\n$/);
});

progress('log: a line now and then, naming the tensor, and a final line', () => {
  const s = new FakeStream(false);
  const bar = createProgressBar({ stream: s, intervalMs: 60_000 });
  for (const p of steps(10, 1000)) bar.update(p);
  bar.done();
  assert.equal(s.chunks, ['loading  10% 1.00 kB / 10.0 kB, tensors 1/10 (t0)\n', 'loading 100% 10.0 kB / 10.0 kB, tensors 10/10\n']);
  const every = new FakeStream(false);
  const b2 = createProgressBar({ stream: every, intervalMs: 0 });
  for (const p of steps(3, 1)) b2.update(p);
  b2.done();
  assert.is(every.chunks.length, 3);
});

progress.run();

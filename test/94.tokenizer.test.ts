// Tokenizer: a small Mixtral-style tokenizer.json (helpers/tokenizers.ts: BPE with byte fallback,
// '▁' for spaces, <s> prepended by the post-processor), loaded from files with nothing fetched.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoeError, Tokenizer } from '../lib/index';
import { expectMoeError, tmpDir } from './helpers/checkpoints';
import { tinyTokenizerJson } from './helpers/tokenizers';

const tok = suite<{ dir: string }>('tokenizer', { dir: '' });
tok.before((ctx) => {
  ctx.dir = tmpDir('moe-tok-');
  fs.writeFileSync(path.join(ctx.dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(ctx.dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: { content: '</s>' }, add_bos_token: true, clean_up_tokenization_spaces: false }));
});
tok.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

tok('encodes with merges, <s> first; decodes back', ({ dir }) => {
  const t = Tokenizer.fromFile(dir);
  assert.equal(t.encode('hello world'), [1, 271, 276]);
  assert.equal(t.tokenize('hello world'), ['<s>', '▁hello', '▁world']);
  assert.equal(t.encode('hello world', { addSpecialTokens: false }), [271, 276]);
  assert.is(t.decode([1, 271, 276], { skipSpecialTokens: true }), 'hello world');
  assert.is(t.decode(new Int32Array([271, 276])), 'hello world');
  assert.equal([t.bosTokenId, t.eosTokenId], [1, 2]);
  assert.equal([t.tokenToId('▁world'), t.idToToken(271), t.tokenToId('nope')], [276, '▁hello', null]);
});

tok('bytes outside the vocabulary fall back to <0xNN> tokens and decode to the same text', ({ dir }) => {
  const t = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const text = 'hello wörld!\nok';
  const ids = t.encode(text, { addSpecialTokens: false });
  // ö is UTF-8 C3 B6: byte tokens 3 + 0xC3, 3 + 0xB6
  assert.ok(ids.includes(3 + 0xc3) && ids.includes(3 + 0xb6));
  assert.is(t.decode(ids), text);
});

tok('errors: a missing file, a non-tokenizer JSON, bad ids', async ({ dir }) => {
  await expectMoeError(() => Tokenizer.fromFile(path.join(dir, 'nope.json')), 'ERR_FILE_NOT_FOUND', 'nope.json');
  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(bad, '{"version": "1.0"}');
  await expectMoeError(() => Tokenizer.fromFile(bad), 'ERR_TOKENIZER', 'bad.json', 'no "model"');
  const t = Tokenizer.fromFile(dir);
  assert.throws(() => t.decode([1, -2]), (e: Error) => e instanceof TypeError && /ids\[1\] must be a non-negative integer, got -2/.test(e.message));
  assert.throws(() => t.encode(5 as never), (e: Error) => e instanceof TypeError && !(e instanceof MoeError));
});

tok.run();

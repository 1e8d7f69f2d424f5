// `using` and `await using` on models and blocks (Symbol.dispose / Symbol.asyncDispose): the
// native layers and caches are freed at the end of the scope, and the objects refuse later calls.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MixtralBlock, MixtralModel, MoeCheckpoint } from '../lib/index';
import { expectMoeError, tmpDir, writeTinyMixtral } from './helpers/checkpoints';

const dispose = suite<{ dir: string }>('model dispose', { dir: '' });
dispose.before((ctx) => {
  ctx.dir = tmpDir('moe-dispose-');
});
dispose.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

dispose('using / await using a MixtralModel disposes it at the end of the scope', async ({ dir }) => {
  const d = path.join(dir, 'tiny');
  await writeTinyMixtral(d);
  let kept: MixtralModel;
  {
    using model = await MixtralModel.load(d, { maxSeq: 8 });
    kept = model;
    assert.is((await model.forward([1, 2])).dims[0], 2);
    assert.not.ok(model.disposed);
  }
  assert.ok(kept.disposed);
  await expectMoeError(() => kept.forward([1]), 'ERR_DISPOSED');
  {
    await using model = await MixtralModel.load(d, { maxSeq: 8 });
    kept = model;
  }
  assert.ok(kept.disposed);
});

dispose('using a MixtralBlock disposes it', async ({ dir }) => {
  const d = path.join(dir, 'block');
  await writeTinyMixtral(d);
  const m = await MoeCheckpoint.open(d);
  const layer = await m.loadLayer(0);
  m.close();
  let kept: MixtralBlock;
  {
    using block = await MixtralBlock.create(m.config, layer, { maxSeq: 4 });
    kept = block;
    assert.not.ok(block.disposed);
  }
  assert.ok(kept.disposed);
});

dispose.run();

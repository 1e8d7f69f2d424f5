import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { backendInfo, MoeLayer, tensor } from '../lib/index';

test('the addon loads and reports its backend', () => {
  const info = backendInfo();
  assert.is(info.backend, 'cpu');
  assert.ok(info.cpu.threads >= 1);
});

test('a layer runs', async () => {
  const d = 4, f = 6, E = 3;
  const ones = (n: number) => new Float32Array(n).fill(0.1);
  const layer = await MoeLayer.create({
    gate: tensor('float32', ones(E * d), [E, d]),
    w1: tensor('float32', ones(E * f * d), [E, f, d]),
    w3: tensor('float32', ones(E * f * d), [E, f, d]),
    w2: tensor('float32', ones(E * d * f), [E, d, f]),
  });
  const { output } = await layer.forward(tensor('float32', ones(2 * d), [2, d]));
  assert.equal(output.dims, [2, d]);
  layer.dispose();
});

test.run();

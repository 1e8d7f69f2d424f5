// A Node HTTP server that runs one MoE layer per request (CommonJS).
//   node examples/server.cjs           # then: curl -s -X POST localhost:8080/moe -d '[[0.1, ...]]'
// The layer is created once; forward() runs on the native compute pool and never blocks the event
// loop, so concurrent requests queue on the pool and each gets the same bits it would alone.
'use strict';
const http = require('node:http');
const { MoeLayer, tensor, backendInfo } = require('moe-kernels');

const d = 64, f = 128, E = 8;
function randn(n, scale, seed) {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t ^= t + Math.imul(t ^ (t >>> 7), 61 | t);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

async function main() {
  // #region readme
  const layer = await MoeLayer.create(
    {
      gate: tensor('float32', randn(E * d, 0.1, 1), [E, d]),
      w1: tensor('float32', randn(E * f * d, 0.1, 2), [E, f, d]),
      w3: tensor('float32', randn(E * f * d, 0.1, 3), [E, f, d]),
      w2: tensor('float32', randn(E * d * f, 0.1, 4), [E, d, f]),
    },
    { topK: 2 },
  );
  console.log(backendInfo().reason);

  const server = http.createServer(async (req, res) => {
    try {
      const body = await new Promise((ok, fail) => {
        let s = '';
        req.on('data', (c) => (s += c)).on('end', () => ok(s)).on('error', fail);
      });
      const rows = JSON.parse(body); // [[...d numbers], ...]
      const x = tensor('float32', rows.flat(), [rows.length, d]);
      const { output, routing } = await layer.forward(x, { returnRouting: true });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ output: Array.from(output.data), experts: Array.from(routing.topkIds.data) }));
    } catch (e) {
      // bad input is a TypeError/RangeError with a message naming the argument
      res.statusCode = e instanceof TypeError || e instanceof RangeError || e instanceof SyntaxError ? 400 : 500;
      res.end(JSON.stringify({ error: e.message, code: e.code }));
    }
  });
  // PORT=0: any free port (the tests use it); the line below says which
  server.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}/moe (d=${d})`));
  // #endregion
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});

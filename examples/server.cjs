// The serving engine inside your own Node HTTP server (CommonJS): many requests share one model,
// each step batching every running sequence. (For an OpenAI-compatible server, run
// `npx moe-kernels serve <model>` instead.)
//   node examples/server.cjs [<checkpoint dir | file.gguf>]     # no argument: the tiny demo model
//   curl -N -X POST localhost:8080/generate -d '{"prompt": "Hello", "maxTokens": 20}'
'use strict';
const http = require('node:http');
const { Engine, MixtralModel, demoModel } = require('moe-kernels');

async function main() {
  // #region readme
  // maxSeq 1: the engine keeps the KV caches in its own block pools, not in the model
  const options = { maxSeq: 1 };
  const model = process.argv[2] ? await MixtralModel.load(process.argv[2], options) : await demoModel(options);
  const engine = await Engine.create(model, { maxSequences: 16, maxQueued: 64, maxContext: 2048 });

  const server = http.createServer(async (req, res) => {
    if (req.method !== 'POST' || req.url !== '/generate') return void res.writeHead(404).end();
    const ac = new AbortController();
    res.on('close', () => ac.abort()); // the client left: its sequence is cancelled, its KV blocks freed
    try {
      let body = '';
      for await (const chunk of req) if ((body += chunk).length > 65536) return void res.writeHead(413).end();
      const { prompt, maxTokens = 16, temperature = 0, seed } = JSON.parse(body);
      // a string, chat messages [{ role, content }] or { tokens: [ids] }; checked before it queues
      const generation = engine.generate(prompt, { maxTokens, temperature, seed, signal: ac.signal });
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      for await (const chunk of generation) {
        if ('text' in chunk) res.write(chunk.text); // whole characters, as they become final
        else res.end(`\n[${chunk.finishReason}: ${chunk.usage.completionTokens} tokens]\n`);
      }
    } catch (e) {
      if (res.headersSent) return void res.end();
      // bad input: TypeError / RangeError / SyntaxError; a full queue: ERR_OVERLOADED
      const status = e.code === 'ERR_OVERLOADED' ? 429 : e instanceof TypeError || e instanceof RangeError || e instanceof SyntaxError ? 400 : 500;
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e.message, code: e.code }));
    }
  });
  // PORT=0: any free port (the tests use it); the line below says which
  server.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}/generate`));

  process.once('SIGTERM', async () => {
    server.close(); // no new connections; running requests go on
    await Promise.race([engine.drain(), new Promise((r) => setTimeout(r, 10_000).unref())]);
    await engine.close(); // cancels what is left
    model.dispose();
    server.closeAllConnections();
  });
  // #endregion
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});

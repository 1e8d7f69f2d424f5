'use strict';
// Times one contender at one T with benchmark.js: a deferred test whose every call is one
// `forward` Promise. The row's budget is benchmark.js's maxTime; the number of samples shrinks
// when one call alone takes longer than that (T=2048 on the real Mixtral layer: seconds a call).
const Benchmark = require('benchmark');

/**
 * plan: {
 *   budget      seconds per row (benchmark.js maxTime)
 *   samples     samples to take when calls are fast (benchmark.js minSamples, capped by budget)
 *   minTime     seconds per sample (benchmark.js repeats fast calls within a sample)
 *   predicted   seconds per call predicted from a smaller T, or null
 * }
 * A warm-up call runs first (scratch memory first touched, routing taken) unless the predicted
 * call is several budgets long: there one call more would double the row's time, and first-touch
 * costs are small next to the call.
 */
async function timeRow(name, fn, x, plan) {
  let warmup = null;
  if (plan.predicted == null || plan.predicted <= 4 * plan.budget) {
    const t0 = process.hrtime.bigint();
    await fn(x);
    warmup = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  const estimate = warmup ?? plan.predicted;
  const minSamples = Math.max(1, Math.min(plan.samples, Math.floor(plan.budget / estimate)));

  let calls = 0;
  let failure = null;
  const bench = new Benchmark(name, {
    defer: true,
    minSamples,
    maxTime: plan.budget,
    minTime: plan.minTime,
    delay: 0,
    fn(deferred) {
      calls++;
      fn(x).then(
        () => deferred.resolve(),
        (e) => {
          failure = failure || e;
          deferred.resolve();
        },
      );
    },
  });
  await new Promise((resolve) => {
    bench.on('complete', resolve);
    bench.run({ async: true });
  });
  if (failure) throw failure;
  if (bench.error) throw bench.error;
  const s = bench.stats;
  return {
    mean: s.mean,
    rme: s.rme,
    deviation: s.deviation,
    min: Math.min(...s.sample),
    samples: s.sample.slice(),
    calls,
    warmup,
  };
}

module.exports = { timeRow };

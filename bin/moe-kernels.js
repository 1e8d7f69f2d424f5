#!/usr/bin/env node
// The moe-kernels command: `moe-kernels --help`. The commands live in lib/cli/cli.ts (compiled to dist/).
'use strict';

// `moe-kernels inspect dir | head -3`: the reader leaves after three lines and the next write fails
// with EPIPE. That is no error of ours: stop quietly, as other command-line tools do.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e) => {
    if (e && e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });

require('../dist/cli/cli.js')
  .main(process.argv.slice(2))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      // a defect of the package (typed errors and system errors are one-line messages already)
      console.error(e && e.stack ? e.stack : String(e));
      process.exitCode = 1;
    },
  );

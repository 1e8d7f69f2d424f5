#!/usr/bin/env node
// The moe-kernels command: `moe-kernels --help`. The commands live in lib/cli/cli.ts (compiled to dist/).
'use strict';
require('../dist/cli/cli.js')
  .main(process.argv.slice(2))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      console.error(e && e.stack ? e.stack : String(e));
      process.exitCode = 1;
    },
  );

#!/usr/bin/env node
// Stands in for node-gyp when prebuildify runs (scripts/prebuild.js): builds build/Release/*.node
// with scripts/build-native.js and ignores node-gyp's arguments (N-API: no target headers needed).
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { stdio: 'inherit' });
process.exit(r.status ?? 1);

'use strict';
// eserveless: cron wrapper. Runs the exported function named by its first
// argument (`node cron.cjs Ticker`) of functions.js once as fn(envs), where envs holds every ESERVELESS_* variable,
// awaits it, and exits 0; a throw or a rejection exits 1.
const { LoadError, loadFunction } = require('./loader.cjs');

const FUNCTION_NAME = process.argv[2];

const envs = {};
for (const key of Object.keys(process.env).sort()) {
  if (key.startsWith('ESERVELESS_')) envs[key] = process.env[key];
}

function fail(err) {
  if (err instanceof LoadError) {
    console.error(err.message);
    if (err.detail) console.error(err.detail);
  } else {
    console.error(`eserveless: function "${FUNCTION_NAME}" failed:`, err);
  }
  process.exit(1);
}

loadFunction(FUNCTION_NAME)
  .then((fn) => fn(envs))
  .then(() => {
    // Do not wait for timers or sockets the function left open.
    process.exit(0);
  }, fail);

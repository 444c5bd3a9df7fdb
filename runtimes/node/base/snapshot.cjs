'use strict';
// eserveless: V8 startup snapshot of the HTTP wrapper, built by the Dockerfile with
//   node --snapshot-blob snapshot.blob --build-snapshot snapshot.cjs
// and started with `node --snapshot-blob snapshot.blob`. Debian's node 18 ships
// without node's built-in startup snapshot, so a plain `node server.cjs`
// bootstraps node's internals from source on every cold start; deserialising
// this blob skips that (~35 ms). Only node's own bootstrap is captured: at run
// time server.cjs is loaded as the main module, exactly as `node server.cjs`
// would (process.argv[1], require.main), and it loads functions.js then.
//
// The blob only loads with the V8 flags it was built with: a V8 flag in the
// CMD or in NODE_OPTIONS (--max-old-space-size, --stack-size, ...) must also
// be given to the build command, else node exits 1 with "Failed to load the
// startup snapshot".
const SERVER = '/app/.eserveless-build/server.cjs';

// Node 18 lists "module" as not yet supported in user snapshots and warns about
// it; it is node's CommonJS loader, already part of the bootstrap being
// captured. Drop that one warning, and only that one.
function requireBuiltin(id) {
  const emitWarning = process.emitWarning;
  const unsupported = `built-in module ${id} is not yet supported in user snapshots`;
  process.emitWarning = function (warning, ...rest) {
    if (warning === unsupported) return;
    return Reflect.apply(emitWarning, this, [warning, ...rest]);
  };
  try {
    return require(id);
  } finally {
    process.emitWarning = emitWarning;
  }
}

const Module = requireBuiltin('module');

require('v8').startupSnapshot.setDeserializeMainFunction(() => {
  // `node --snapshot-blob snapshot.blob check`: the image build's proof that
  // the blob deserialises with the image's node and environment.
  if (process.argv[1] === 'check') process.exit(0);
  // Run as `node server.cjs` would. node caches process.cwd(): drop the value
  // captured at build time. And a child_process.fork() must start its own
  // module, not this snapshot again: drop --snapshot-blob from execArgv.
  process.chdir('.');
  const blob = process.execArgv.indexOf('--snapshot-blob');
  if (blob !== -1) process.execArgv.splice(blob, 2);
  process.argv.splice(1, 0, SERVER);
  Module.runMain(SERVER);
});

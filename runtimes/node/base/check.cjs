'use strict';
// eserveless: build-time check, run by the Dockerfile. Exits 1 with a single
// "eserveless: ..." line (plus node's own details for a load error) when the
// function cannot be served, so that the image build fails with that message.
// Checks every function named on its command line, loading functions.js once.
const { LoadError, loadFunction } = require('./loader.cjs');

const names = process.argv.slice(2);
names.reduce((done, name) => done.then(() => loadFunction(name)), Promise.resolve()).then(
  () => {
    // functions.js may have started timers or sockets at load time: do not wait for them.
    process.exit(0);
  },
  (err) => {
    if (err instanceof LoadError) {
      console.error(err.message);
      if (err.detail) console.error(err.detail.replace(/^/gm, '    '));
    } else {
      console.error(`eserveless: functions.js could not be checked: ${err && err.stack ? err.stack : err}`);
    }
    process.exit(1);
  },
);

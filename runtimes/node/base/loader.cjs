'use strict';
// eserveless: loads the user's functions.js (CommonJS, or an ES module when
// package.json says "type": "module") and returns the exported function.
// The function's name is the wrapper's first argument (process.argv[2]): one
// image holds the code of every function of a deployment.
const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

const FUNCTIONS_FILE = path.join(__dirname, '..', 'functions.js');

class LoadError extends Error {}

function oneLine(err) {
  const text = err && err.message ? `${err.name || 'Error'}: ${err.message}` : String(err);
  return text.split('\n')[0];
}

// Where in functions.js a SyntaxError happened: node prints it as the first
// line of the stack ("/app/functions.js:12").
function location(err) {
  const first = err && typeof err.stack === 'string' ? err.stack.split('\n')[0] : '';
  const m = /([^\s/]+\.js):(\d+)$/.exec(first);
  return m ? ` (${m[1]}:${m[2]})` : '';
}

async function loadModule() {
  if (!fs.existsSync(FUNCTIONS_FILE)) {
    throw new LoadError('eserveless: functions.js not found at the root of the repository');
  }
  try {
    return require(FUNCTIONS_FILE);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') {
      try {
        const ns = await import(pathToFileURL(FUNCTIONS_FILE).href);
        // Named exports first, then the members of a default-exported object.
        const merged = Object.assign({}, ns.default && typeof ns.default === 'object' ? ns.default : {}, ns);
        delete merged.default;
        return merged;
      } catch (esmErr) {
        err = esmErr;
      }
    }
    const e = new LoadError(`eserveless: functions.js failed to load: ${oneLine(err)}${location(err)}`);
    // node's details (file:line, the offending line, a caret), without the
    // stack frames of node itself and of this wrapper.
    e.detail = (err && err.stack ? err.stack : String(err))
      .split('\n')
      .filter((line) => !/^\s+at (node:|.*\(node:|.*\.eserveless-build)/.test(line))
      .join('\n');
    throw e;
  }
}

function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  const t = typeof value;
  return t === 'object' ? 'an object' : `a ${t}`;
}

async function loadFunction(FUNCTION_NAME) {
  const mod = await loadModule();
  const exported = mod && (typeof mod === 'object' || typeof mod === 'function') ? mod : {};
  const fn = exported[FUNCTION_NAME];
  if (typeof fn === 'function') return fn;
  const names = Object.keys(exported).filter((k) => typeof exported[k] === 'function');
  const list = names.length ? names.join(', ') : 'no functions';
  if (fn === undefined) {
    throw new LoadError(`eserveless: function "${FUNCTION_NAME}" is not exported by functions.js (it exports: ${list})`);
  }
  throw new LoadError(`eserveless: "${FUNCTION_NAME}" exported by functions.js is ${describe(fn)}, not a function (it exports: ${list})`);
}

module.exports = { LoadError, loadFunction };

'use strict';

// http: a Node (req, res) handler. Meta values arrive as ESERVELESS_<KEY> variables.
function hello(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const who = url.searchParams.get('name') || 'world';
  console.log(`hello from ${req.socket.remoteAddress} for ${who}`);
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ message: `${process.env.ESERVELESS_GREETING || 'Hello'}, ${who}!` }));
}

// cron: receives every ESERVELESS_* variable (meta `target` is ESERVELESS_TARGET).
function tick(envs) {
  console.log(`tick for ${envs.ESERVELESS_TARGET} at ${new Date().toISOString()}`);
}

module.exports = { hello, tick };

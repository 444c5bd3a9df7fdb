'use strict';
// eserveless: HTTP wrapper. Serves every path with the exported function
// "{{ function }}" of functions.js, on 0.0.0.0:$PORT (default {{ port }}).
const http = require('http');
const { FUNCTION_NAME, LoadError, loadFunction } = require('./loader.cjs');

const port = parseInt(process.env.PORT || '{{ port }}', 10);

function main(handler) {
  const server = http.createServer((req, res) => {
    const fail = (err) => {
      console.error(`eserveless: function "${FUNCTION_NAME}" failed on ${req.method} ${req.url}:`, err);
      if (!res.headersSent) {
        res.statusCode = 500;
        res.setHeader('Content-Type', 'text/plain; charset=utf-8');
        res.end('Internal Server Error\n');
      } else if (!res.writableEnded) {
        res.destroy();
      }
    };
    try {
      const result = handler(req, res);
      if (result && typeof result.then === 'function') result.then(undefined, fail);
    } catch (err) {
      fail(err);
    }
  });
  // Outlive the gateway's idle pooled connections, so a pooled connection is
  // never closed by us just as the gateway reuses it.
  server.keepAliveTimeout = 120 * 1000;
  server.headersTimeout = 125 * 1000;
  server.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  server.listen(port, '0.0.0.0', () => {
    console.log(`eserveless: function "${FUNCTION_NAME}" listening on 0.0.0.0:${port}`);
  });
  // As PID 1, node would ignore SIGTERM without a handler.
  const stop = () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

loadFunction().then(main, (err) => {
  if (err instanceof LoadError) {
    console.error(err.message);
    if (err.detail) console.error(err.detail);
  } else {
    console.error(`eserveless: function "${FUNCTION_NAME}" could not be loaded:`, err);
  }
  process.exit(1);
});

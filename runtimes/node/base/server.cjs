'use strict';
// eserveless: HTTP wrapper. Serves every path with the exported function named
// by its first argument (process.argv[2]) of functions.js, on 0.0.0.0:$PORT
// (default {{ port }}), and on the
// Unix socket $ESERVELESS_SOCKET when set: the gateway's fast path into this container.
const fs = require('fs');
const http = require('http');
const { LoadError, loadFunction } = require('./loader.cjs');

const FUNCTION_NAME = process.argv[2];

const port = parseInt(process.env.PORT || '{{ port }}', 10);
const socketPath = process.env.ESERVELESS_SOCKET || '';

// The client's address: the last X-Forwarded-For entry, the one the gateway appended (those
// before it are the client's own claims). Only the gateway can connect here.
function clientAddress(req) {
  const xff = req.headers['x-forwarded-for'];
  if (typeof xff !== 'string' || xff === '') return undefined;
  return xff.slice(xff.lastIndexOf(',') + 1).trim() || undefined;
}

function main(handler) {
  const handle = (req, res) => {
    // Through the Unix socket the peer has no address, and over TCP it is the gateway: give
    // handlers the client's, where Node code looks for it (`req.socket.remoteAddress`,
    // `req.connection.remoteAddress`). Set per request: a kept-alive connection carries
    // requests of many clients, one at a time.
    const ip = clientAddress(req);
    if (ip !== undefined) {
      Object.defineProperty(req.socket, 'remoteAddress', { value: ip, configurable: true, writable: true });
      Object.defineProperty(req.socket, 'remoteFamily', { value: ip.includes(':') ? 'IPv6' : 'IPv4', configurable: true, writable: true });
    }
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
  };
  const newServer = () => {
    const server = http.createServer(handle);
    // Outlive the gateway's idle pooled connections, so a pooled connection is
    // never closed by us just as the gateway reuses it.
    server.keepAliveTimeout = 120 * 1000;
    server.headersTimeout = 125 * 1000;
    // Upgrade requests (WebSocket) reach the same handler, with `req.upgrade === true`, the
    // connection in `req.socket` and its first bytes in `req.upgradeHead`: a library takes
    // them over (ws: `wss.handleUpgrade(req, req.socket, req.upgradeHead, cb)`). A handler
    // that answers with `res` instead declines the upgrade; the connection closes after it.
    server.on('upgrade', (req, socket, head) => {
      req.upgradeHead = head;
      const res = new http.ServerResponse(req);
      res.shouldKeepAlive = false;
      res.assignSocket(socket);
      res.on('finish', () => {
        res.detachSocket(socket);
        socket.destroySoon();
      });
      handle(req, res);
    });
    server.on('clientError', (err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
    return server;
  };
  const servers = [];
  const listenTcp = () => {
    const server = newServer();
    servers.push(server);
    server.listen(port, '0.0.0.0', () => {
      console.log(`eserveless: function "${FUNCTION_NAME}" listening on 0.0.0.0:${port}`);
    });
  };
  if (socketPath) {
    // The socket is bound before the port opens, so once the port answers (the gateway's
    // readiness check) the socket does too.
    const local = newServer();
    fs.rmSync(socketPath, { force: true });
    local.once('error', (err) => {
      console.error(`eserveless: cannot listen on ${socketPath} (${err.code || err.message}); serving on the port only`);
      listenTcp();
    });
    local.listen(socketPath, () => {
      servers.push(local);
      listenTcp();
    });
  } else {
    listenTcp();
  }
  // As PID 1, node would ignore SIGTERM without a handler.
  const stop = () => {
    let open = servers.length;
    for (const s of servers) s.close(() => { if (--open === 0) process.exit(0); });
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

loadFunction(FUNCTION_NAME).then(main, (err) => {
  if (err instanceof LoadError) {
    console.error(err.message);
    if (err.detail) console.error(err.detail);
  } else {
    console.error(`eserveless: function "${FUNCTION_NAME}" could not be loaded:`, err);
  }
  process.exit(1);
});

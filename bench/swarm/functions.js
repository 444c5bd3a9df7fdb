// Benchmark handlers for `scripts/bench --engine swarm`: the same hello-world everywhere, so
// the figures differ only by where the instance runs and how the gateway reaches it.
const fs = require("fs");

const VERSION = "v1";
function hello(req, res) {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`hello ${VERSION}\n`);
}

// NearTcp: the gateway tries the instance's Unix socket before TCP, and falls back to TCP
// when the socket file is missing. Removing the file (the server keeps listening on the open
// socket) and closing the connection that carried this first request makes every later
// connection TCP, with no change to the server.
let socketDropped = false;
function nearTcp(req, res) {
  if (!socketDropped) {
    socketDropped = true;
    if (process.env.ESERVELESS_SOCKET) fs.rmSync(process.env.ESERVELESS_SOCKET, { force: true });
    res.setHeader("connection", "close");
  }
  hello(req, res);
}

// Steady: 100 ms per request, answering with the container's hostname (its short id), so the
// bench can tell which node served each request.
const HOST = require("os").hostname();
function steady(req, res) {
  setTimeout(() => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`hello ${VERSION} ${HOST}\n`);
  }, 100);
}

module.exports = { Near: hello, NearTcp: nearTcp, Far: hello, Cold: hello, Steady: steady };

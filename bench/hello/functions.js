const VERSION = "v1";
function hello(req, res) {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`hello ${VERSION}\n`);
}
function Sleepy(req, res) {
  setTimeout(() => hello(req, res), 200);
}
module.exports = { Hello: hello, Private: hello, Pausing: hello, Cold: hello, Sleepy };

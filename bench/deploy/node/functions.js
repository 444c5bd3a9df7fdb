// The Node project of `scripts/bench --deploy` (bench/deploy/README.md).
// The bench's one-line change rewrites this line (v1 -> v2).
const VERSION = "v1";

function API(req, res) {
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ runtime: "node", version: VERSION, path: req.url }) + "\n");
}

function Ticker(envs) {
  console.log("TICK", VERSION, Object.keys(envs).length);
}

// API2..API5: the same handler under more names, for the disk-per-function figure.
module.exports = { API, Ticker, API2: API, API3: API, API4: API, API5: API };

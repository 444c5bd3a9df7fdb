"""`scripts/bench --deploy`: the issue-13 build-speed figures, one or more server binaries.

For each binary (`--binary PATH`, repeatable, `LABEL=PATH` names its column; without one the
checkout's release binary is built) and each of `--deploy-rounds` rounds (binaries
interleaved within a round, so drift on a shared machine hits them alike), a fresh server
is started on a fresh data dir with `--allow-local-repos`, and it deploys, from fixtures
under bench/deploy/ copied into new git repositories:

  go      Go project, 2 functions (http API + cron Ticker; package `functions` at the root,
          go.mod, an internal dependency-free package): first deploy, then a one-line
          change committed in the package and deployed again
  node    Node project, 2 functions (no npm dependency): first deploy / one-line change
  python  Python project, 2 functions, one PyPI dependency: first deploy / one-line change;
          a server without the python runtime fails the deployment with "unknown runtime",
          reported as n/a with the server's own message
  disk    (first round only: sizes do not drift) the Node project deployed with 1 and with 5
          http functions (same code): unique image bytes per extra function

A figure is the wall time from the deploy request (POST /api/projects) to the deployment
being live (polled every --deploy-poll seconds: status `ready` and `live`), median of the
rounds. Each project name is new (a random suffix) and every fixture file gets a random
comment line, so no Docker layer built in an earlier round matches: the only caches that
help a first deploy are the base images, and a redeploy only what the design keeps from
the first deploy of the same project. Docker volumes and containers that appear during a
round (a build cache a design might keep outside the data dir) are listed;
`--fresh-volumes` removes the volumes whose name says eserveless after each round.

Per-phase times: while polling, the time each line of the deployment log (and each line of
a function's build log, and each function's build-state change) was first seen, from the
request; the server's own created/started/finished stamps give the queue time.

Disk method: the layers of every image of the project (the function images the API names
and any image labelled eserveless.project=<project>), identified by chain ID (so a layer
shared by several images counts once), minus the layers of the runtime's base image; each
layer's size is Docker's own record of it (<docker root>/image/<driver>/layerdb/sha256/
<chain id>/size, the bytes `docker system df` counts). Per extra function =
(bytes with 5 functions - bytes with 1) / 4.
"""
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from bench_common import logger, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "bench", "deploy")
RUNTIMES = ("go", "node", "python")
SOURCE = {"go": "functions.go", "node": "functions.js", "python": "functions.py"}
# The table: (key, figure, goal text, goal in the figure's unit, the "now").
FIGURES = (
    ("go_first", "Go 2 functions: first deploy, POST to live", "<= 25 s", 25.0, "71 s"),
    ("go_change", "Go: after a one-line change", "<= 8 s", 8.0, "62 s"),
    ("node_first", "Node 2 functions: first deploy", "<= 6 s", 6.0, "8.6 s"),
    ("node_change", "Node: after a one-line change", "<= 3 s", 3.0, "7.6 s"),
    ("python_first", "Python 2 functions + 1 dep: first deploy", "<= 15 s", 15.0, "-"),
    ("python_change", "Python: after a one-line change", "<= 3 s", 3.0, "-"),
    ("disk_per_fn", "Node: disk per extra function", "<= 1 MB", 1e6, "a full image"),
)


log = logger("deploy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_ts(s):
    """An RFC 3339 stamp from the API (chrono prints up to 9 fraction digits) as epoch seconds."""
    if not s:
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


class ApiError(Exception):
    pass


class Server:
    """One `eserveless serve` on a fresh data dir and port, stopped by stop()."""

    def __init__(self, binary, workdir):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", os.path.join(workdir, "data"),
             "--allow-local-repos"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
            env={**os.environ, "ESERVELESS_LOG": os.environ.get("ESERVELESS_LOG", "warn")})
        self.token = None
        token_file = os.path.join(workdir, "data", "admin-token")
        end = time.time() + 60
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2):
                    pass
                if os.path.exists(token_file):
                    with open(token_file) as f:
                        self.token = f.read().strip()
                    if self.token:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer within 60 s: {self.tail()}")

    def tail(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def api(self, method, path, body=None, timeout=600):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                err = json.loads(text)["error"]
                text = f"{err.get('code')}: {err.get('message')}"
            except (ValueError, KeyError, TypeError):
                pass
            raise ApiError(f"{method} {path}: {e.code} {text}") from None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- repositories --------------------------------------------------------------------------

def git(repo, *args):
    run(["git", "-c", "user.email=bench@eserveless", "-c", "user.name=bench", *args], cwd=repo)


def make_repo(tmp, runtime, nonce, manifest=None):
    """A new git repository from bench/deploy/<runtime>, every file made unique by `nonce`."""
    repo = os.path.join(tmp, f"{runtime}-{nonce}")
    shutil.copytree(os.path.join(FIXTURES, runtime), repo)
    if manifest is not None:
        with open(os.path.join(repo, ".eserveless.yaml"), "w") as f:
            f.write(manifest)
    # A comment in every file (the dependency files too): no layer of an earlier round's
    # build, whose context differed, can be reused by Docker's layer cache.
    for dirpath, _, files in os.walk(repo):
        for name in files:
            path = os.path.join(dirpath, name)
            mark = {".go": "//", ".mod": "//", ".js": "//", ".py": "#", ".txt": "#", ".yaml": "#"}.get(
                os.path.splitext(name)[1])
            if mark:
                with open(path, "a") as f:
                    f.write(f"{mark} bench nonce {nonce}\n")
            elif name == "package.json":
                with open(path) as f:
                    pkg = json.load(f)
                pkg["benchNonce"] = nonce
                with open(path, "w") as f:
                    json.dump(pkg, f, indent=2)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    return repo


def one_line_change(repo, runtime):
    """v1 -> v2 on the version line of the functions' source, committed."""
    path = os.path.join(repo, SOURCE[runtime])
    with open(path) as f:
        src = f.read()
    if src.count('"v1"') != 1:
        raise RuntimeError(f"{path}: expected one \"v1\" to change")
    with open(path, "w") as f:
        f.write(src.replace('"v1"', '"v2"'))
    git(repo, "commit", "-qam", "v2: one-line change")


# -- one timed deployment ------------------------------------------------------------------

def timed_deploy(srv, repo, name, poll):
    """POST the repository and poll the deployment until it is live or failed.

    Returns {"ok", "seconds" (request -> live), "status", "error", "events" [[t, what]],
    "build_log_lines" [[t, function, line]], "server" {queue_s, build_s, total_s}}."""
    t0 = time.perf_counter()
    out = {"ok": False, "project": name, "events": [], "build_log_lines": []}
    try:
        v = srv.api("POST", "/api/projects", {"repository": repo, "name": name})
    except ApiError as e:
        out.update(status="rejected", error=str(e), seconds=time.perf_counter() - t0)
        return out
    out["post_s"] = time.perf_counter() - t0
    if v.get("status") == "unchanged":
        out.update(status="unchanged", error="the server answered `unchanged`: nothing was deployed")
        return out
    dep = v["deployment"]
    out["deployment"] = dep
    seen_status, log_lines, fn_state, fn_log = None, 0, {}, {}
    while True:
        d = srv.api("GET", f"/api/projects/{name}/deployments/{dep}")
        t = time.perf_counter() - t0
        if d["status"] != seen_status:
            seen_status = d["status"]
            out["events"].append([t, f"status {seen_status}"])
        lines = (d.get("log") or "").splitlines()
        for line in lines[log_lines:]:
            out["events"].append([t, line])
        log_lines = len(lines)
        for f in d.get("functions") or []:
            if fn_state.get(f["name"]) != f.get("build_state"):
                fn_state[f["name"]] = f.get("build_state")
                out["events"].append([t, f"{f['name']}: {f.get('build_state')}"])
            blines = (f.get("build_log") or "").splitlines()
            for line in blines[fn_log.get(f["name"], 0):]:
                out["build_log_lines"].append([t, f["name"], line])
            fn_log[f["name"]] = len(blines)
        if d["status"] == "ready" and d.get("live", True):
            out.update(ok=True, status="live", seconds=t)
            break
        if d["status"] == "failed":
            out.update(status="failed", error=d.get("error") or "failed without an error", seconds=t)
            break
        if t > 1800:
            out.update(status="timeout", error=f"not live after {t:.0f} s (status {d['status']})", seconds=t)
            break
        time.sleep(poll)
    created, started, finished = (parse_ts(d.get(k)) for k in ("created_at", "started_at", "finished_at"))
    out["server"] = {
        "queue_s": started - created if created and started else None,
        "started_to_finished_s": finished - started if started and finished else None,
        "created_to_finished_s": finished - created if created and finished else None,
    }
    return out


def invoke(srv, project, fn, timeout=60):
    with urllib.request.urlopen(f"{srv.base}/invoke/{project}/{fn}", timeout=timeout) as r:
        return r.read().decode(errors="replace").strip()


def delete_project(srv, name):
    try:
        srv.api("DELETE", f"/api/projects/{name}")
    except (ApiError, OSError) as e:
        log(f"cleanup of {name}: {e}")


def measure_runtime(srv, tmp, runtime, poll):
    """First deploy and one-line-change redeploy of bench/deploy/<runtime> on a new project."""
    nonce = secrets.token_hex(4)
    name = f"bd-{runtime}-{nonce}"
    repo = make_repo(tmp, runtime, nonce)
    res = {"project": name}
    log(f"{runtime}: first deploy of {name}")
    res["first"] = first = timed_deploy(srv, repo, name, poll)
    log(f"{runtime}: first deploy {first['status']} in {first['seconds']:.1f} s"
        + (f": {first['error'].splitlines()[0]}" if first.get("error") else ""))
    if first["ok"]:
        one_line_change(repo, runtime)
        res["change"] = change = timed_deploy(srv, repo, name, poll)
        log(f"{runtime}: one-line change {change['status']} in {change['seconds']:.1f} s"
            + (f": {change['error'].splitlines()[0]}" if change.get("error") else ""))
        if change["ok"]:
            # Not timed: proves the new commit is what serves.
            try:
                res["serving_after_change"] = body = invoke(srv, name, "API")
                if '"v2"' not in body:
                    res["change"].update(ok=False, status="failed", error=f"live but serving {body!r}, not v2")
            except OSError as e:
                res["change"].update(ok=False, status="failed", error=f"live but API does not answer: {e}")
    delete_project(srv, name)
    return res


# -- disk ----------------------------------------------------------------------------------

class Layers:
    """Layer sizes by chain ID, from the engine's layer database."""

    def __init__(self):
        info = json.loads(run(["docker", "info", "-f", "{{json .}}"]))
        self.db = os.path.join(info["DockerRootDir"], "image", info["Driver"], "layerdb", "sha256")
        self.readable = os.path.isdir(self.db)

    @staticmethod
    def chain(image):
        """The chain IDs of an image's layers, bottom first."""
        diff_ids = json.loads(run(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", image])) or []
        chain = []
        for d in diff_ids:
            chain.append(d if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest())
        return chain

    def size(self, chain_id):
        with open(os.path.join(self.db, chain_id.split(":", 1)[1], "size")) as f:
            return int(f.read().strip())


def project_images(srv, name):
    p = srv.api("GET", f"/api/projects/{name}")
    images = {f["image"] for f in p.get("functions") or [] if f.get("image")}
    images |= set(run(["docker", "images", "-q", "--no-trunc", "--filter", f"label=eserveless.project={name}"]).split())
    # A tag and an ID may name the same image: count each image once.
    ids = {run(["docker", "image", "inspect", "-f", "{{.Id}}", i]).strip(): i for i in sorted(images)}
    return sorted(ids.values()), p


def measure_disk(srv, tmp, poll, base_image):
    layers = Layers()
    if not layers.readable:
        return {"error": f"cannot read Docker's layer database at {layers.db}"}
    base = set(Layers.chain(base_image))
    out = {"base_image": base_image, "method": "union of the project's image layers by chain ID, minus the base image's; "
                                               "sizes from Docker's layerdb"}
    fns = ["API", "API2", "API3", "API4", "API5"]
    for n in (1, 5):
        nonce = secrets.token_hex(4)
        name = f"bd-disk{n}-{nonce}"
        manifest = "runtime: node\nfunctions:\n" + "".join(f"  - name: {f}\n    type: http\n" for f in fns[:n])
        repo = make_repo(tmp, "node", nonce, manifest)
        log(f"disk: deploying {name} ({n} function{'s' if n > 1 else ''})")
        d = timed_deploy(srv, repo, name, poll)
        entry = {"project": name, "deploy_seconds": d.get("seconds"), "status": d["status"]}
        if not d["ok"]:
            entry["error"] = d.get("error")
            out[f"fns_{n}"] = entry
            delete_project(srv, name)
            continue
        images, _ = project_images(srv, name)
        union, per_image = {}, {}
        for img in images:
            chain = Layers.chain(img)
            above = [c for c in chain if c not in base]
            for c in above:
                union[c] = layers.size(c)
            per_image[img] = {"layers": len(chain), "layers_above_base": len(above),
                              "bytes_above_base": sum(layers.size(c) for c in above)}
        entry.update(images=per_image, unique_layers=len(union), unique_bytes=sum(union.values()))
        log(f"disk: {n} function(s): {len(images)} images, {len(union)} layers above the base, "
            f"{entry['unique_bytes'] / 1e6:.1f} MB")
        out[f"fns_{n}"] = entry
        delete_project(srv, name)
    if "unique_bytes" in out.get("fns_1", {}) and "unique_bytes" in out.get("fns_5", {}):
        out["per_extra_function_bytes"] = (out["fns_5"]["unique_bytes"] - out["fns_1"]["unique_bytes"]) / 4
    return out


# -- rounds --------------------------------------------------------------------------------

def docker_ids(kind):
    cmd = ["docker", "volume", "ls", "-q"] if kind == "volumes" else ["docker", "ps", "-aq", "--no-trunc"]
    return set(run(cmd, check=False).split())


def one_round(binary, label, r, tmp, args, with_disk):
    wd = os.path.join(tmp, f"round{r}-{re.sub(r'[^A-Za-z0-9]+', '_', label)}")
    before = {k: docker_ids(k) for k in ("volumes", "containers")}
    log(f"round {r}, {label}: starting a server on a fresh data dir")
    res = {"binary": binary}
    t0 = time.time()
    srv = Server(binary, wd)
    try:
        for rt in RUNTIMES:
            if rt not in args.deploy_skip:
                res[rt] = measure_runtime(srv, wd, rt, args.deploy_poll)
        if with_disk and "disk" not in args.deploy_skip:
            res["disk"] = measure_disk(srv, wd, args.deploy_poll,
                                       os.environ.get("ESERVELESS_NODE_IMAGE", "node:20-bookworm-slim"))
    finally:
        srv.stop()
        res["server_log_tail"] = srv.tail()[-1000:]
    res["round_seconds"] = time.time() - t0
    after = {k: docker_ids(k) for k in ("volumes", "containers")}
    new_vols = sorted(after["volumes"] - before["volumes"])
    res["new_volumes"] = new_vols
    res["new_containers_left"] = sorted(after["containers"] - before["containers"])
    if new_vols:
        log(f"volumes that appeared during the round: {' '.join(new_vols)}")
        if args.fresh_volumes:
            for v in new_vols:
                if "eserveless" in v:
                    run(["docker", "volume", "rm", v], check=False)
    if res["new_containers_left"]:
        log(f"containers that appeared during the round and are still there: {len(res['new_containers_left'])}")
    shutil.rmtree(wd, ignore_errors=True)
    return res


def figure_values(rounds, key):
    """The successful values of a figure over the rounds, and the reason when none."""
    vals, notes = [], []
    for res in rounds:
        if key == "disk_per_fn":
            d = res.get("disk")
            if d is None:
                continue
            if d.get("per_extra_function_bytes") is not None:
                vals.append(d["per_extra_function_bytes"])
            else:
                notes.append(d.get("error") or next((d[k].get("error") for k in ("fns_1", "fns_5")
                                                     if d.get(k, {}).get("error")), "no figure"))
            continue
        rt, which = key.split("_")
        m = res.get(rt)
        if m is None:
            continue
        d = m.get(which)
        if d is None:  # the first deploy failed: its reason stands for this one too
            notes.append(m["first"].get("error") or "the first deploy failed")
        elif d["ok"]:
            vals.append(d["seconds"])
        else:
            notes.append(d.get("error") or d["status"])
    return vals, notes


def cell(key, vals, notes):
    if vals:
        v = statistics.median(vals)
        s = f"{v / 1e6:.2f} MB" if key == "disk_per_fn" else f"{v:.1f} s"
        return s + (f" ({len(vals)} ok)" if notes else "")
    if not notes:
        return "skipped"
    if any(re.search(r"unknown runtime `?python", n) for n in notes):
        return "n/a (runtime python unknown to this server)"
    return "failed: " + notes[0].splitlines()[0][:60]


def print_phases(label, rounds, key):
    vals, _ = figure_values(rounds, key)
    rt, which = key.split("_")
    cands = [res[rt][which] for res in rounds if res.get(rt, {}).get(which, {}).get("ok")]
    if not cands:
        return
    med = statistics.median_low(vals)
    d = next(c for c in cands if c["seconds"] == med)
    sv = d.get("server") or {}
    extra = f", server queue {sv['queue_s']:.2f} s" if sv.get("queue_s") is not None else ""
    print(f"  {key} [{label}] median round, {d['seconds']:.1f} s (POST answered at {d.get('post_s', 0):.2f} s{extra}):")
    prev = 0.0
    for t, what in d["events"]:
        print(f"    {t:7.1f} s  (+{t - prev:5.1f})  {what[:100]}")
        prev = t
    # Build steps, only when the server streams the build log (seen over more than one poll):
    # a log written once at the end of each build carries no step times.
    steps = [(t, fn, line) for t, fn, line in d["build_log_lines"] if re.match(r"(Step \d+/\d+|#\d+ \[)", line)]
    if len({t for t, _, _ in d["build_log_lines"]}) > len({fn for _, fn, _ in d["build_log_lines"]}):
        print("    build steps, as first seen:")
        for t, fn, line in steps:
            print(f"    {t:7.1f} s  {fn:<8} {line[:90]}")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(args):
    binaries = []
    for b in args.binary or []:
        label, _, path = b.rpartition("=") if "=" in b else (None, None, b)
        path = os.path.abspath(path)
        if not os.access(path, os.X_OK):
            raise SystemExit(f"--binary {path}: not an executable")
        binaries.append((label or path, path))
    if not binaries:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        sha = run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False).strip()
        binaries.append((f"this checkout ({sha or '?'})", os.path.join(ROOT, "target", "release", "eserveless")))
    if len({label for label, _ in binaries}) != len(binaries):
        raise SystemExit("two --binary share a label: name them LABEL=PATH")
    if not os.environ.get("ESERVELESS_NODE_IMAGE"):
        # The offline base images, built from Debian packages when missing (idempotent).
        log("ESERVELESS_NODE_IMAGE is not set: taking the images scripts/offline-images prints")
        for line in run([os.path.join(ROOT, "scripts", "offline-images")]).splitlines():
            m = re.match(r"export (\w+)=(.*)$", line.strip())
            if m:
                os.environ[m.group(1)] = m.group(2).strip("'\"")
    json_path = args.json or "bench-deploy-results.json"
    results = {
        "conditions": {
            "cpus": os.cpu_count(), "rounds": args.deploy_rounds, "poll_s": args.deploy_poll,
            "docker": run(["docker", "version", "-f", "{{.Server.Version}}"]).strip(),
            "images": {k: v for k, v in os.environ.items() if re.match(r"ESERVELESS_\w+_IMAGE$", k)},
            # The version string does not tell two builds apart: the file's hash does.
            "binaries": {label: {"path": path, "version": run([path, "--version"], check=False).strip(),
                                 "sha256": file_sha256(path),
                                 "mtime": datetime.fromtimestamp(os.path.getmtime(path), timezone.utc).isoformat()}
                         for label, path in binaries},
        },
        "rounds": {label: [] for label, _ in binaries},
    }
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="eserveless-bench-deploy-")
    try:
        for r in range(1, args.deploy_rounds + 1):
            for label, path in binaries:
                results["rounds"][label].append(one_round(path, label, r, tmp, args, with_disk=(r == 1)))
                with open(json_path, "w") as f:  # partial results survive an interrupted run
                    json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["seconds"] = time.time() - t_start

    summary = {}
    for label, _ in binaries:
        summary[label] = {}
        for key, *_ in FIGURES:
            vals, notes = figure_values(results["rounds"][label], key)
            summary[label][key] = {"median": statistics.median(vals) if vals else None, "values": vals,
                                   "notes": notes, "cell": cell(key, vals, notes)}
    results["summary"] = summary
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)

    labels = [label for label, _ in binaries]
    widths = [max(len(l), 44) for l in labels]
    print(f"{'figure (medians of ' + str(args.deploy_rounds) + ' rounds, POST to live)':<44} "
          + " ".join(f"{l:<{w}}" for l, w in zip(labels, widths)) + f" {'goal (issue 13; issue said now)'}")
    for key, name, goal, _, now in FIGURES:
        print(f"{name:<44} " + " ".join(f"{summary[l][key]['cell']:<{w}}" for l, w in zip(labels, widths))
              + f" {goal} (was {now})")
    print()
    print("Disk: unique bytes of the project's image layers above the base image, shared layers counted once")
    print("(chain IDs; sizes from Docker's layerdb, as `docker system df` counts them); per extra function =")
    print("(5 functions - 1 function) / 4, Node project, same code.")
    for label in labels:
        d = results["rounds"][label][0].get("disk") or {}
        f1, f5 = d.get("fns_1", {}), d.get("fns_5", {})
        if "unique_bytes" in f1 and "unique_bytes" in f5:
            print(f"  [{label}] 1 function: {len(f1['images'])} image(s), {f1['unique_bytes'] / 1e6:.1f} MB; "
                  f"5 functions: {len(f5['images'])} image(s), {f5['unique_bytes'] / 1e6:.1f} MB")
    print()
    print("Per-phase times (when each deployment-log line and build-state change was first seen, from the request):")
    for label in labels:
        for key, *_ in FIGURES:
            if key != "disk_per_fn":
                print_phases(label, results["rounds"][label], key)
    print(f"\nrun took {results['seconds'] / 60:.1f} min; JSON (with each function's build-log lines and the time each "
          f"was first seen) in {json_path}")
    failed = [f"{l}: {k}" for l in labels for k, s in summary[l].items()
              if s["cell"].startswith("failed")]
    if failed:
        raise SystemExit(f"failed figures: {', '.join(failed)}")

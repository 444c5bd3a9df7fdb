"""`scripts/bench --engine swarm`: the issue-12 figures measured against a running swarm lab.

Needs the environment `scripts/swarm-lab up` prints (ESERVELESS_LAB_NODES, ESERVELESS_URL,
ESERVELESS_TOKEN), a server on the manager started with `--engine swarm` and its own registry,
and wrk and curl on the host. The host reaches the lab's bridge directly; commands inside the
nodes go through `docker exec`. Where an instance lands is steered with
`docker node update --availability pause|active` (pause stops new tasks on a node without
moving its running ones; the manager is never drained: the registry is pinned there). Every
node is set active again at the end, whatever happened.

Sections (each can be left out with --skip):
  warm   c=1 wrk, interleaved rounds: gateway -> instance on the manager (Unix socket),
         gateway -> instance on the manager over TCP, gateway -> instance on a worker (TCP
         through the attach namespace over the overlay), and wrk run inside the attach
         namespace straight to each instance's task address (the hop without the gateway)
  cold   first byte after scale to zero (idle_timeout 1 s; the bench waits until the service
         and its container are gone), on the manager vs. on a worker with the image already
         there vs. on a worker whose copy of the image was removed (first pull)
  image  a one-line change redeployed: layers and bytes the registry did not have before
         (manifests from the registry API), and `docker pull` of each revision on a worker
         (seconds, bytes the node received, layers pulled vs. already there)
  kill   ~20 req/s for 40 s to a function with instances on every node; `docker kill` of the
         worker that served the most, `docker start` after the load; failed requests and
         seconds from the kill until every request is served again
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from bench_common import logger, run as common_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


log = logger("swarm")


def run(cmd, check=True, **kw):
    return common_run(cmd, check=check, error=SystemExit, **kw)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Lab:
    """The lab's nodes, server and registry, from `scripts/swarm-lab up`'s exports."""

    def __init__(self):
        try:
            self.nodes = os.environ["ESERVELESS_LAB_NODES"].split()
            self.url = os.environ["ESERVELESS_URL"].rstrip("/")
            self.token = os.environ["ESERVELESS_TOKEN"]
        except KeyError as e:
            raise SystemExit(f"{e.args[0]} is not set: run `eval \"$(scripts/swarm-lab up)\"` first")
        if len(self.nodes) < 3:
            raise SystemExit("the swarm benchmark needs a manager and two workers (ESERVELESS_LAB_NODES)")
        self.manager, self.workers = self.nodes[0], self.nodes[1:]
        host = self.url.split("://", 1)[1].split(":")[0]
        self.registry = f"{host}:{os.environ.get('ESERVELESS_REGISTRY_PORT', '5000')}"
        self.keys = {}

    # -- docker inside the nodes
    def sh(self, node, script, check=True):
        return run(["docker", "exec", node, "sh", "-c", script], check=check)

    def docker(self, node, *args, check=True):
        return run(["docker", "exec", node, "docker", *args], check=check)

    def availability(self, active):
        """Only the nodes in `active` take new tasks; the others are paused."""
        for n in self.nodes:
            want = "active" if n in active else "pause"
            have = self.docker(self.manager, "node", "inspect", "-f", "{{.Spec.Availability}}", n).strip()
            if have != want:
                self.docker(self.manager, "node", "update", "--availability", want, n)

    def all_active(self):
        for n in self.nodes:
            self.docker(self.manager, "node", "update", "--availability", "active", n, check=False)

    # -- the server's API
    def api(self, method, path, body=None, timeout=600):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"content-type": "application/json", "authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def deploy(self, repo, name):
        v = self.api("POST", "/api/projects", {"repository": repo, "name": name})
        if v.get("invoke_key"):
            self.keys[name] = v["invoke_key"]
        dep = v["deployment"]
        while True:
            d = self.api("GET", f"/api/projects/{name}/deployments/{dep}")
            if d["status"] in ("ready", "failed"):
                if d["status"] == "failed":
                    raise SystemExit(f"deployment of {name} failed: {d.get('error')}")
                return d
            time.sleep(0.3)

    def function(self, project, fn):
        p = self.api("GET", f"/api/projects/{project}")
        return next(f for f in p["functions"] if f["name"] == fn)

    def instance_nodes(self, project, fn):
        return [i.get("node") for i in self.function(project, fn).get("instance_list") or []]

    def services(self, project, fn=None):
        """Ids of the instance services of a project (or one function) on the swarm."""
        args = ["service", "ls", "-q", "--filter", f"label=eserveless.project={project}"]
        if fn:
            args += ["--filter", f"label=eserveless.function={fn}"]
        return self.docker(self.manager, *args).split()

    def containers(self, node, project, fn):
        return self.docker(node, "ps", "-aq", "--filter", f"label=eserveless.project={project}",
                           "--filter", f"label=eserveless.function={fn}", check=False).split()

    # -- a git repository inside the manager (the server deploys local repos there)
    def make_repo(self, src, path):
        self.sh(self.manager, f"rm -rf {path} && mkdir -p {path}")
        run(["docker", "cp", f"{src}/.", f"{self.manager}:{path}"])
        self.git(path, "init", "-q", "-b", "main")
        self.git(path, "add", "-A")
        self.git(path, "commit", "-qm", "v1")

    def git(self, path, *args):
        self.docker_exec_git(path, args)

    def docker_exec_git(self, path, args):
        run(["docker", "exec", "-w", path, self.manager, "git", "-c", "user.email=bench@eserveless",
             "-c", "user.name=bench", *args])

    # -- measuring
    def first_byte(self, path):
        out = run(["curl", "-s", "-o", "/dev/null", "-D", "-", "-w", "\nCODE %{http_code} TTFB %{time_starttransfer}\n",
                   "--max-time", "120", f"{self.url}{path}"], check=False)
        m = re.search(r"CODE (\d+) TTFB ([0-9.]+)", out)
        timing = re.findall(r"(?im)^server-timing: *(.*)$", out)
        return {"code": int(m.group(1)), "ttfb_ms": float(m.group(2)) * 1000, "server_timing": timing[0].strip() if timing else None}

    def rx_bytes(self, node):
        return int(self.sh(node, "cat /sys/class/net/eth0/statistics/rx_bytes").strip())

    def node_pid(self, node):
        return run(["docker", "inspect", "-f", "{{.State.Pid}}", node]).strip()

    def registry_get(self, path, accept=MANIFEST_V2):
        req = urllib.request.Request(f"http://{self.registry}{path}", headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read()), r.headers.get("Docker-Content-Digest")


def wrk(cmd_prefix, url, conns, secs):
    out = run([*cmd_prefix, "wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{secs}s", "--latency", url])

    def to_ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    res = {"rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for q in ("50", "90", "99"):
        m = re.search(rf"{q}%\s+([0-9.]+)(us|ms|s)", out)
        res[f"p{q}_ms"] = to_ms(*m.groups()) if m else None
    res["non2xx"] = int(re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out).group(1)) if "Non-2xx" in out else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return res


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


# ------------------------------------------------------------------------------------ warm

def warm_section(lab, project, args):
    """Near on the manager (Unix socket), NearTcp on the manager (TCP), Far on a worker."""
    far_node = lab.workers[0]
    # Connections opened per function and transport over the whole section: proof of which
    # path each target took (wrk reuses its connections, so the runs themselves open none).
    before = connects(lab)
    log(f"placing Near and NearTcp on {lab.manager}")
    lab.availability([lab.manager])
    for fn in ("Near", "NearTcp"):
        run(["curl", "-sf", "-o", "/dev/null", f"{lab.url}/invoke/{project}/{fn}"])
    # NearTcp's first answer dropped its socket and closed that connection: later ones are TCP.
    run(["curl", "-sf", "-o", "/dev/null", f"{lab.url}/invoke/{project}/NearTcp"])
    log(f"placing Far on {far_node}")
    lab.availability([far_node])
    run(["curl", "-sf", "-o", "/dev/null", f"{lab.url}/invoke/{project}/Far"])
    lab.all_active()
    placed = {fn: lab.instance_nodes(project, fn) for fn in ("Near", "NearTcp", "Far")}
    log(f"placement: {placed}")
    if placed["Near"] != [lab.manager] or placed["NearTcp"] != [lab.manager] or placed["Far"] != [far_node]:
        raise SystemExit(f"instances are not where the bench put them: {placed}")

    # The attach container's network namespace, as the host reaches it through the manager's root.
    attach = lab.docker(lab.manager, "ps", "-q", "--filter", "label=eserveless.attach=true",
                        "--filter", f"label=eserveless.project={project}").split()
    if not attach:
        raise SystemExit(f"no attach container for {project} on {lab.manager}")
    key = lab.docker(lab.manager, "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", attach[0]).strip()
    # /var/run is a symlink to /run in the node: resolved on the host it would leave the node.
    netns = f"/proc/{lab.node_pid(lab.manager)}/root{key.replace('/var/run/', '/run/', 1)}"
    in_attach = ["nsenter", f"--net={netns}"]

    def task_addr(fn):
        svc = lab.services(project, fn)[0]
        tasks = lab.docker(lab.manager, "service", "ps", "-q", "--filter", "desired-state=running", svc).split()
        nets = json.loads(lab.docker(lab.manager, "inspect", "-f", "{{json .NetworksAttachments}}", tasks[0]))
        for n in nets:
            if n["Network"]["Spec"].get("Labels", {}).get("eserveless.project") == project:
                return n["Addresses"][0].split("/")[0]
        raise SystemExit(f"no overlay address for {fn}")

    near_ip, far_ip = task_addr("Near"), task_addr("Far")
    targets = [
        ("gateway_near_unix", [], f"{lab.url}/invoke/{project}/Near"),
        ("gateway_near_tcp", [], f"{lab.url}/invoke/{project}/NearTcp"),
        ("gateway_far_tcp", [], f"{lab.url}/invoke/{project}/Far"),
        ("attach_ns_direct_near", in_attach, f"http://{near_ip}:8080/"),
        ("attach_ns_direct_far", in_attach, f"http://{far_ip}:8080/"),
    ]
    rounds = {}
    for conns in args.swarm_conns:
        for label, pre, url in targets:
            wrk(pre, url, conns, 2)  # warm-up
        for r in range(args.rounds):
            for label, pre, url in targets:
                res = wrk(pre, url, conns, args.seconds)
                res["loadavg"] = loadavg()
                if res["non2xx"] or res["socket_errors"]:
                    raise SystemExit(f"{label}: {res['non2xx']} non-2xx, {res['socket_errors']} socket errors")
                rounds.setdefault(f"{label}_c{conns}", []).append(res)
                log(f"warm {label} c={conns} round {r + 1}: p50 {res['p50_ms']:.3f} ms, {res['rps']:.0f} req/s")
    after = connects(lab)
    warm = {}
    for key, runs in rounds.items():
        warm[key] = {"p50_ms": median(x["p50_ms"] for x in runs), "p99_ms": median(x["p99_ms"] for x in runs),
                     "rps": median(x["rps"] for x in runs), "p50_samples_ms": [x["p50_ms"] for x in runs],
                     "rounds": runs}
    # Ratios of the same round, so drift on a shared machine cancels; then their median.
    added = {}
    for conns in args.swarm_conns:
        def per_round(a, b):
            return [x["p50_ms"] - y["p50_ms"] for x, y in zip(rounds[f"{a}_c{conns}"], rounds[f"{b}_c{conns}"])]
        added[f"c{conns}"] = {
            "hop_via_gateway_ms (far_tcp - near_tcp)": per_round("gateway_far_tcp", "gateway_near_tcp"),
            "far_vs_fast_path_ms (far_tcp - near_unix)": per_round("gateway_far_tcp", "gateway_near_unix"),
            "tcp_vs_unix_same_node_ms (near_tcp - near_unix)": per_round("gateway_near_tcp", "gateway_near_unix"),
            "hop_direct_ms (attach ns: far - near)": per_round("attach_ns_direct_far", "attach_ns_direct_near"),
            "gateway_added_far_ms (gateway far - attach ns far)": per_round("gateway_far_tcp", "attach_ns_direct_far"),
        }
    return {"placement": placed, "far_node": far_node, "task_addresses": {"Near": near_ip, "Far": far_ip},
            "connects_during_runs": {k: after.get(k, 0) - before.get(k, 0) for k in after},
            "runs": warm, "added_p50_per_round": added,
            "added_p50_median_ms": {c: {k: median(v) for k, v in d.items()} for c, d in added.items()}}


def connects(lab):
    """The gateway's upstream connection counters by transport, from /metrics."""
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{lab.url}/metrics", headers={"authorization": f"Bearer {lab.token}"}), timeout=10) as r:
            text = r.read().decode()
    except urllib.error.URLError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("eserveless_upstream_connections") or line.startswith("upstream_connections"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ------------------------------------------------------------------------------------ cold

def wait_gone(lab, project, fn, timeout=120):
    """Until the pool has no instance of `fn` and no node has its service or container."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not lab.instance_nodes(project, fn) and not lab.services(project, fn) and \
                not any(lab.containers(n, project, fn) for n in lab.nodes):
            return time.time() - t0
        time.sleep(0.2)
    raise SystemExit(f"{fn} still has instances after {timeout} s")


def cold_section(lab, project, args):
    """Cold starts to first byte on the manager, on a worker with the image, on a worker without."""
    remote = lab.workers[1]  # Far holds workers[0]; this one has no other instance of the image
    path = f"/invoke/{project}/Cold"
    samples = {"local": [], "remote_cached": [], "remote_first_pull": []}
    kinds = ["local", "remote_first_pull", "remote_cached"]
    for i in range(args.samples):
        for kind in kinds:
            if kind == "remote_first_pull" and i >= args.pull_samples:
                continue
            wait_gone(lab, project, "Cold")
            lab.availability([lab.manager] if kind == "local" else [remote])
            if kind == "remote_first_pull":
                # Only the bench's function images: the base image swarm-lab loaded and the
                # server's node guard (also from the registry, running) stay.
                lab.sh(remote, f"docker image ls --format '{{{{.ID}}}} {{{{.Repository}}}}' | grep ' {lab.registry}/eserveless/bench-swarm' | "
                               "cut -d' ' -f1 | sort -u | xargs -r docker image rm -f >/dev/null")
            rx0 = lab.rx_bytes(remote)
            s = lab.first_byte(path)
            s["node"] = (lab.instance_nodes(project, "Cold") or [None])[0]
            s["remote_rx_bytes"] = lab.rx_bytes(remote) - rx0
            s["loadavg"] = loadavg()
            want = lab.manager if kind == "local" else remote
            if s["code"] != 200 or s["node"] != want:
                raise SystemExit(f"cold {kind}: answer {s['code']} from {s['node']}, wanted 200 from {want}")
            samples[kind].append(s)
            log(f"cold {kind} #{len(samples[kind])}: {s['ttfb_ms']:.0f} ms on {s['node']} ({s['server_timing']})")
    lab.all_active()
    med = {k: median(x["ttfb_ms"] for x in v) for k, v in samples.items()}
    return {"scale_to_zero": "idle_timeout 1s in the fixture; each sample waits until the pool, the swarm "
                             "(service) and the node (container) have no instance of Cold",
            "remote_node": remote, "samples": samples, "ttfb_p50_ms": med,
            "remote_cached_vs_local": med["remote_cached"] / med["local"] if med["local"] else None,
            "remote_first_pull_vs_local": (med["remote_first_pull"] / med["local"]
                                           if med["local"] and med["remote_first_pull"] else None)}


# ------------------------------------------------------------------------------------ image

def image_section(lab, repo_path, project, args):
    """v1 deployed, then a one-line change: what the registry and a worker had to receive."""
    node = lab.workers[1]

    def manifest(image):
        repo, tag = image.rsplit(":", 1)
        m, digest = lab.registry_get(f"/v2/{repo}/manifests/{tag}")
        return repo, digest, m

    def all_registry_layers():
        cat, _ = lab.registry_get("/v2/_catalog?n=1000", accept="application/json")
        layers = set()
        for repo in cat.get("repositories") or []:
            tags, _ = lab.registry_get(f"/v2/{repo}/tags/list", accept="application/json")
            for tag in tags.get("tags") or []:
                m, _ = lab.registry_get(f"/v2/{repo}/manifests/{tag}")
                layers.update(l["digest"] for l in m.get("layers", []))
        return layers

    def pull(ref):
        rx0 = lab.rx_bytes(node)
        t0 = time.perf_counter()
        out = lab.docker(node, "pull", ref)
        secs = time.perf_counter() - t0
        return {"ref": ref, "seconds": secs, "node_rx_bytes": lab.rx_bytes(node) - rx0,
                "layers_pulled": out.count("Pull complete"), "layers_already_there": out.count("Already exists"),
                "output": out.strip().splitlines()}

    before_v1 = all_registry_layers()
    t0 = time.time()
    lab.deploy(repo_path, project)
    v1_deploy_s = time.time() - t0
    img1 = lab.function(project, "Near")["image"]
    repo1, d1, m1 = manifest(img1)
    after_v1 = all_registry_layers()
    ref1 = f"{lab.registry}/{repo1}@{d1}"
    pull1 = pull(ref1)
    log(f"v1 {ref1}: pulled in {pull1['seconds']:.2f} s, {pull1['node_rx_bytes']} bytes on {node}")

    lab.sh(lab.manager, f"cd {repo_path} && sed -i 's/const VERSION = \"v1\"/const VERSION = \"v2\"/' functions.js")
    lab.git(repo_path, "commit", "-qam", "v2: one line changed")
    t0 = time.time()
    lab.deploy(repo_path, project)
    v2_deploy_s = time.time() - t0
    img2 = lab.function(project, "Near")["image"]
    repo2, d2, m2 = manifest(img2)
    ref2 = f"{lab.registry}/{repo2}@{d2}"
    layers1 = {l["digest"]: l["size"] for l in m1["layers"]}
    layers2 = {l["digest"]: l["size"] for l in m2["layers"]}
    new = {d: s for d, s in layers2.items() if d not in after_v1}
    pulls2 = []
    for k in range(max(1, min(args.samples, 7))):
        if k:
            # Only v2's own layers go (v1 still holds the shared ones), so each pull moves the change again.
            lab.docker(node, "image", "rm", ref2)
        pulls2.append(pull(ref2))
        log(f"v2 {ref2}: pulled in {pulls2[-1]['seconds']:.2f} s, {pulls2[-1]['node_rx_bytes']} bytes on {node}")
    pull2 = dict(pulls2[0])
    pull2["seconds_samples"] = [x["seconds"] for x in pulls2]
    pull2["node_rx_bytes_samples"] = [x["node_rx_bytes"] for x in pulls2]
    pull2["seconds_median"] = median(pull2["seconds_samples"])
    pull2["node_rx_bytes_median"] = median(pull2["node_rx_bytes_samples"])
    return {
        "node": node, "v1": {"image": img1, "ref": ref1, "deploy_seconds": v1_deploy_s,
                             "layers": len(layers1), "bytes": sum(layers1.values()),
                             "new_layers_in_registry": len(set(layers1) - before_v1),
                             "new_bytes_in_registry": sum(s for d, s in layers1.items() if d not in before_v1),
                             "pull": pull1},
        "v2": {"image": img2, "ref": ref2, "deploy_seconds": v2_deploy_s, "layers": len(layers2),
               "bytes": sum(layers2.values()), "new_layers_in_registry": len(new), "new_bytes_in_registry": sum(new.values()),
               "new_layer_digests": new, "pull": pull2},
        "v2_layers_shared_with_v1": len(set(layers1) & set(layers2)),
    }


# ------------------------------------------------------------------------------------ kill

def kill_section(lab, project, args):
    """Steady load, a worker with instances killed, failed requests and recovery time."""
    lab.all_active()
    lab.deploy(f"/root/bench-swarm-kill", project)
    path = f"/invoke/{project}/Steady"
    for _ in range(100):
        nodes = lab.instance_nodes(project, "Steady")
        if len(nodes) >= 3:
            break
        time.sleep(0.3)
    log(f"Steady instances on {nodes}")

    def host_of_containers():
        # container hostname (short id) -> node
        m = {}
        for n in lab.nodes:
            for cid in lab.docker(n, "ps", "-q", "--filter", f"label=eserveless.project={project}", check=False).split():
                m[cid[:12]] = n
        return m

    results, lock = [], threading.Lock()

    def one(t_send):
        t0 = time.time()
        try:
            with urllib.request.urlopen(f"{lab.url}{path}", timeout=30) as r:
                body = r.read().decode().strip()
                code = r.status
        except urllib.error.HTTPError as e:
            body, code = e.read().decode(errors="replace")[:200], e.code
        except Exception as e:  # noqa: BLE001 - every failure counts, whatever it is
            body, code = str(e)[:200], None
        with lock:
            results.append({"sent": t_send, "done": time.time(), "code": code, "ms": (time.time() - t0) * 1000, "body": body})

    def load(secs, rate, on_tick=None):
        threads, t_start = [], time.time()
        n = int(secs * rate)
        for k in range(n):
            target = t_start + k / rate
            time.sleep(max(0.0, target - time.time()))
            if on_tick:
                on_tick(time.time() - t_start)
            th = threading.Thread(target=one, args=(time.time(),), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(60)

    # Which worker carries traffic: a short probe at the same rate.
    load(5, args.kill_rate)
    where = host_of_containers()
    served = {}
    for r in results:
        h = r["body"].split()[-1] if r["code"] == 200 else None
        served[where.get(h, h)] = served.get(where.get(h, h), 0) + 1
    victims = sorted((n for n in lab.workers if n in served or n in nodes), key=lambda n: -served.get(n, 0))
    victim = victims[0] if victims else lab.workers[-1]
    log(f"probe: served per node {served}; victim {victim}")
    results.clear()

    kill_at = {}

    def tick(elapsed):
        if elapsed >= args.kill_after and "t" not in kill_at:
            kill_at["t"] = time.time()
            subprocess.run(["docker", "kill", victim], capture_output=True)
            log(f"docker kill {victim} at {elapsed:.1f} s")

    load(args.kill_seconds, args.kill_rate, tick)
    t_kill = kill_at["t"]
    nodes_after = lab.instance_nodes(project, "Steady")
    down_state = lab.docker(lab.manager, "node", "inspect", "-f", "{{.Status.State}}", victim, check=False).strip()
    run(["docker", "start", victim])
    t_start = time.time()
    state = ""
    while time.time() - t_start < 120:
        state = lab.docker(lab.manager, "node", "inspect", "-f", "{{.Status.State}}", victim, check=False).strip()
        if state == "ready":
            break
        time.sleep(0.5)
    rejoin_s = time.time() - t_start

    results.sort(key=lambda r: r["sent"])
    pre = [r["ms"] for r in results if r["sent"] < t_kill and r["code"] == 200]
    # Slow = ten times the usual answer (at least 1 s): a request that waited out a dead
    # connection or a start on a dead node, not one that met a busy moment on 2 shared cores.
    slow_ms = max(1000.0, 10 * (median(pre) or 100))
    failed = [r for r in results if r["code"] != 200]
    bad = [r for r in results if r["sent"] >= t_kill - 30 and r["done"] >= t_kill and (r["code"] != 200 or r["ms"] > slow_ms)]
    recovered = max((r["done"] - t_kill for r in bad), default=0.0)
    per_second = {}
    for r in results:
        s = int(r["sent"] - t_kill) if r["sent"] >= t_kill else -1 - int(t_kill - r["sent"])
        e = per_second.setdefault(s, {"sent": 0, "ok": 0, "max_ms": 0.0})
        e["sent"] += 1
        e["ok"] += r["code"] == 200
        e["max_ms"] = max(e["max_ms"], r["ms"])
    return {
        "rate_per_s": args.kill_rate, "seconds": args.kill_seconds, "kill_after_s": args.kill_after,
        "victim": victim, "instances_before": nodes, "instances_after_load": nodes_after, "probe_served_per_node": served,
        "requests": len(results), "failed": len(failed), "failures": [{k: r[k] for k in ("code", "ms", "body")} | {"sent_after_kill_s": r["sent"] - t_kill} for r in failed],
        "slow_threshold_ms": slow_ms, "slow_or_failed_after_kill": len(bad),
        "seconds_until_every_request_served": recovered,
        "last_failed_or_slow_sent_after_kill_s": max((r["sent"] - t_kill for r in bad), default=None),
        "last_failed_sent_after_kill_s": max((r["sent"] - t_kill for r in failed), default=None),
        "definition": "from docker kill until the completion of the last request that failed or took longer than the slow threshold (max of 1 s and 10x the pre-kill p50)",
        "p50_ms_before_kill": median(pre), "max_ms_after_kill": max((r["ms"] for r in results if r["done"] >= t_kill), default=None),
        "victim_state_at_end_of_load": down_state, "victim_rejoined_ready_after_start_s": rejoin_s, "victim_state": state,
        "per_second_from_kill": dict(sorted(per_second.items())),
        "samples_sent_after_kill_s_ms_code": [[round(r["sent"] - t_kill, 3), round(r["ms"], 1), r["code"]] for r in results],
    }


# ------------------------------------------------------------------------------------ main

def main(args):
    for tool in ("wrk", "curl", "nsenter"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing on the host (apt-get install wrk curl util-linux)")
    lab = Lab()
    skip = set(args.skip or [])
    results = {"engine": "swarm", "lab": {"nodes": lab.nodes, "url": lab.url, "registry": lab.registry},
               "conditions": {"cpus": os.cpu_count(), "loadavg_start": loadavg(), "wrk_seconds": args.seconds,
                              "rounds": args.rounds, "samples": args.samples, "pull_samples": args.pull_samples,
                              "docker": run(["docker", "exec", lab.manager, "docker", "version", "-f", "{{.Server.Version}}"]).strip()}}
    project = "bench-swarm"
    fixture = os.path.join(ROOT, "bench", "swarm")
    try:
        lab.all_active()
        # A fresh start: a redeploy would prewarm instances wherever Swarm puts them.
        for p in ("bench-swarm", "bench-swarm-img", "bench-swarm-kill"):
            try:
                lab.api("DELETE", f"/api/projects/{p}")
                log(f"removed {p} left from an earlier run")
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            while lab.services(p):
                time.sleep(0.5)
        log(f"deploying {fixture} as {project}")
        lab.make_repo(fixture, "/root/bench-swarm")
        t0 = time.time()
        lab.deploy("/root/bench-swarm", project)
        results["first_deploy_seconds"] = time.time() - t0
        if "warm" not in skip:
            results["warm"] = warm_section(lab, project, args)
        if "cold" not in skip:
            results["cold"] = cold_section(lab, project, args)
        if "image" not in skip:
            lab.make_repo(fixture, "/root/bench-swarm-img")
            results["image"] = image_section(lab, "/root/bench-swarm-img", "bench-swarm-img", args)
        if "kill" not in skip:
            lab.make_repo(fixture, "/root/bench-swarm-kill")
            # Instances on every node from the start: in this project only, so the other
            # sections' nodes hold no instance of theirs.
            lab.sh(lab.manager, "cd /root/bench-swarm-kill && sed -i 's/^    min_instances: 0 .*/    min_instances: 3/' .eserveless.yaml")
            lab.git("/root/bench-swarm-kill", "commit", "-qam", "min_instances 3")
            results["kill"] = kill_section(lab, "bench-swarm-kill", args)
    finally:
        lab.all_active()
        results["conditions"]["loadavg_end"] = loadavg()
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        if not args.keep:
            for p in ("bench-swarm", "bench-swarm-img", "bench-swarm-kill"):
                try:
                    lab.api("DELETE", f"/api/projects/{p}")
                except Exception as e:  # noqa: BLE001 - best effort cleanup
                    log(f"cleanup {p}: {e}")
    print_summary(results, args)


def print_summary(results, args):
    rows = []
    w = results.get("warm")
    if w:
        for c, d in w["added_p50_median_ms"].items():
            for k, v in d.items():
                rows.append((f"warm {c} {k}", f"{v:.3f}"))
        for k, r in w["runs"].items():
            rows.append((f"warm p50 ms {k}", f"{r['p50_ms']:.3f} {[round(x, 3) for x in r['p50_samples_ms']]}"))
    c = results.get("cold")
    if c:
        for k, v in c["ttfb_p50_ms"].items():
            rows.append((f"cold first byte p50 ms {k}", f"{v:.0f} {[round(x['ttfb_ms']) for x in c['samples'][k]]}" if v else "-"))
        rows.append(("cold remote (image there) / local", f"{c['remote_cached_vs_local']:.2f}"))
        if c["remote_first_pull_vs_local"]:
            rows.append(("cold remote (first pull) / local", f"{c['remote_first_pull_vs_local']:.2f}"))
    i = results.get("image")
    if i:
        for v in ("v1", "v2"):
            x = i[v]
            rows.append((f"image {v}: layers / new in registry / new bytes", f"{x['layers']} / {x['new_layers_in_registry']} / {x['new_bytes_in_registry']}"))
            secs = x["pull"].get("seconds_median", x["pull"]["seconds"])
            rx = x["pull"].get("node_rx_bytes_median", x["pull"]["node_rx_bytes"])
            rows.append((f"image {v}: pull on {i['node']} s / node rx bytes / pulled+there",
                         f"{secs:.2f} / {rx:.0f} / {x['pull']['layers_pulled']}+{x['pull']['layers_already_there']}"
                         + (f" {[round(t, 2) for t in x['pull']['seconds_samples']]}" if "seconds_samples" in x["pull"] else "")))
    k = results.get("kill")
    if k:
        rows.append((f"kill {k['victim']}: requests / failed", f"{k['requests']} / {k['failed']}"))
        rows.append(("kill: seconds until every request served", f"{k['seconds_until_every_request_served']:.1f}"))
        if k["last_failed_or_slow_sent_after_kill_s"] is not None:
            rows.append(("kill: last failed or slow request sent after kill, s", f"{k['last_failed_or_slow_sent_after_kill_s']:.1f}"))
        rows.append(("kill: node ready after docker start, s", f"{k['victim_rejoined_ready_after_start_s']:.1f}"))
    for name, v in rows:
        print(f"{name:<62} {v}")
    print(f"(JSON in {args.json})")

#!/usr/bin/env python3
"""Cold start of a python hello next to a node hello, built from the runtime templates.

    python3 tests/runtimes/python/coldstart.py [runs]

Prints medians of: the wrapper's start to the port accepting, inside a running
container (the interpreter and server alone), and `docker run` to the first answer
from the host (what the gateway waits for on a cold start). Not a test: figures.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from test_image import REPO, render, sandbox_args  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
PY_IMAGE = os.environ.get("ESERVELESS_PYTHON_IMAGE", "eserveless/python:bookworm")
NODE_IMAGE = os.environ.get("ESERVELESS_NODE_IMAGE", "eserveless/node:bookworm")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def build(kind_dirs, files, variables, tag):
    ctx = tempfile.mkdtemp(prefix="eserveless-cold-")
    try:
        for name, src in files.items():
            with open(os.path.join(ctx, name), "w") as f:
                f.write(src)
        out = os.path.join(ctx, ".eserveless-build")
        os.makedirs(out)
        for d in kind_dirs:
            for name in os.listdir(d):
                if os.path.isfile(os.path.join(d, name)):
                    with open(os.path.join(d, name)) as f:
                        src = render(f.read(), variables)
                    with open(os.path.join(out, name), "w") as f:
                        f.write(src)
        subprocess.run(["docker", "build", "-q", "-t", tag, "-f", os.path.join(out, "Dockerfile"), ctx],
                       check=True, capture_output=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    finally:
        shutil.rmtree(ctx)


def build_all():
    rt = os.path.join(REPO, "runtimes")
    common = {"project": "cold", "commit": "c", "port": 8080}
    build([os.path.join(rt, "python", "base")], {"functions.py": 'def API(request):\n    return "hello"\n'},
          dict(common, functions=[{"name": "API", "kind": "http"}], python_image=PY_IMAGE,
               has_requirements=False, has_pyproject=False), "eserveless-cold/py-base")
    fn = render(open(os.path.join(rt, "python", "http", "Dockerfile")).read(),
                dict(common, function="API", kind="http", base_image="eserveless-cold/py-base"))
    subprocess.run(["docker", "build", "-q", "-t", "eserveless-cold/py", "-"], input=fn, text=True, check=True,
                   capture_output=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    build([os.path.join(rt, "node", "shared"), os.path.join(rt, "node", "http")],
          {"functions.js": "module.exports = { API: (req, res) => res.end('hello') };\n"},
          dict(common, function="API", kind="http", node_image=NODE_IMAGE, has_package_json=False,
               has_package_lock=False), "eserveless-cold/node")


# Inside the container: start the wrapper, poll the port with bash's /dev/tcp.
PROBE = r'''
s=$(date +%s%N); "$@" >/dev/null 2>&1 & p=$!
until (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; do :; done
echo $(( ($(date +%s%N) - s) / 1000 )); kill $p; wait $p 2>/dev/null
'''


def listen_times(tag, cmd):
    cid = sh("docker", "run", "-d", *sandbox_args(), "--entrypoint", "sleep", tag, "600").strip()
    try:
        sh("docker", "exec", cid, "bash", "-c", PROBE, "probe", *cmd)  # warm the page cache
        return [int(sh("docker", "exec", cid, "bash", "-c", PROBE, "probe", *cmd)) / 1000.0 for _ in range(RUNS)]
    finally:
        sh("docker", "rm", "-f", cid)


def first_byte_times(tag):
    out = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        cid = sh("docker", "run", "-d", "-p", "127.0.0.1::8080", *sandbox_args(), tag).strip()
        port = int(sh("docker", "port", cid, "8080/tcp").split(":")[-1])
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=2) as r:
                    r.read()
                break
            except Exception:
                time.sleep(0.005)
        out.append((time.monotonic() - t0) * 1000)
        sh("docker", "rm", "-f", cid)
    return out


def main():
    build_all()
    py_cmd = ["python3", "/app/.eserveless-build/server.py", "API"]
    node_cmd = ["node", "--snapshot-blob", "/app/.eserveless-build/snapshot.blob"]
    rows = [
        ("python: server.py start to listening (ms)", listen_times("eserveless-cold/py", py_cmd)),
        ("node: server.cjs start to listening (ms)", listen_times("eserveless-cold/node", node_cmd)),
        ("python: docker run to first byte (ms)", first_byte_times("eserveless-cold/py")),
        ("node: docker run to first byte (ms)", first_byte_times("eserveless-cold/node")),
    ]
    for name, values in rows:
        print("%-45s median %7.1f   (%s)" % (name, statistics.median(values), " ".join("%.0f" % v for v in values)))
    for tag in ("py", "py-base", "node"):
        subprocess.run(["docker", "rmi", "-f", "eserveless-cold/" + tag], capture_output=True)


if __name__ == "__main__":
    main()

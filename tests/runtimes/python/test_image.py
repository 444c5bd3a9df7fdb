"""Docker tests of the python runtime: the wrapper suite (test_runtime.py) inside the
python image as the sandbox runs functions (uid 65534, read-only root, tmpfs /tmp,
Flask pip-installed into /tmp), and the Dockerfile templates rendered and built
against the fixtures (build, run, cache reuse after a one-line change, build errors).

Needs Docker and the offline image (scripts/offline-images). Without Docker these
tests are skipped, except under CI=true where they fail.
"""
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
RUNTIMES = os.path.join(REPO, "runtimes", "python")
FIXTURES = os.path.join(REPO, "tests", "fixtures")
IMAGE = os.environ.get("ESERVELESS_PYTHON_IMAGE", "eserveless/python:bookworm")
TAG = "eserveless-test/python-rt"


def docker_ok():
    if os.environ.get("PYRT_IN_IMAGE"):
        return False  # this suite running inside the image itself
    try:
        return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def need_docker(test):
    if os.environ.get("PYRT_IN_IMAGE"):
        test.skipTest("inside the image")
    if not docker_ok():
        if os.environ.get("CI") == "true":
            test.fail("docker or %s is missing (run scripts/offline-images)" % IMAGE)
        test.skipTest("docker or %s is missing (run scripts/offline-images)" % IMAGE)


_TAG = re.compile(r"\{\{\s*(.*?)\s*\}\}|\{%\s*(.*?)\s*%\}", re.S)


def render(template, variables):
    """The subset of Jinja the templates use: {{ a }}, {{ f.name }}, if/elif/else/endif,
    for x in list/endfor. (The platform renders them with minijinja.)"""
    tokens = []
    pos = 0
    for m in _TAG.finditer(template):
        tokens.append(("text", template[pos:m.start()]))
        tokens.append(("var", m.group(1)) if m.group(1) is not None else ("tag", m.group(2)))
        pos = m.end()
    tokens.append(("text", template[pos:]))

    def value(expr, scope):
        expr = expr.strip()
        if " or " in expr:
            return any(value(part, scope) for part in expr.split(" or "))
        neg = expr.startswith("not ")
        if neg:
            expr = expr[4:].strip()
        if "==" in expr:
            a, b = (x.strip() for x in expr.split("=="))
            v = value(a, scope) == b.strip("\"'")
        else:
            parts = expr.split(".")
            v = scope[parts[0]]
            for p in parts[1:]:
                v = v[p]
        return (not v) if neg else v

    def run(i, scope, out, stop):
        while i < len(tokens):
            kind, t = tokens[i]
            if kind == "text":
                out.append(t)
            elif kind == "var":
                out.append(str(value(t, scope)))
            elif t.split()[0] in stop:
                return i
            elif t.startswith("if "):
                taken = False
                cond = value(t[3:], scope)
                while True:
                    buf = []
                    i = run(i + 1, scope, buf, ("elif", "else", "endif"))
                    if cond and not taken:
                        out.extend(buf)
                        taken = True
                    end = tokens[i][1]
                    if end == "endif":
                        break
                    cond = True if end == "else" else value(end[5:], scope)
            elif t.startswith("for "):
                var, _, seq = t[4:].partition(" in ")
                start = i
                for item in value(seq, scope):
                    i = run(start + 1, dict(scope, **{var.strip(): item}), out, ("endfor",))
                if not value(seq, scope):
                    i = run(start + 1, scope, [], ("endfor",))
            else:
                raise ValueError("unsupported tag %r" % t)
            i += 1
        return i

    out = []
    run(0, variables, out, ())
    return "".join(out)


def docker(*args, check=True, timeout=900, **kw):
    r = subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("docker %s failed:\n%s\n%s" % (" ".join(args), r.stdout[-3000:], r.stderr[-3000:]))
    return r


class Project:
    """A fixture copied to a temp dir, rendered and built like the platform does."""

    def __init__(self, fixture, functions):
        self.dir = tempfile.mkdtemp(prefix="eserveless-pyimg-")
        self.ctx = os.path.join(self.dir, "ctx")
        shutil.copytree(os.path.join(FIXTURES, fixture) if not os.path.isabs(fixture) else fixture, self.ctx)
        self.functions = functions
        self.images = []

    def variables(self):
        return {
            "project": "pytest", "commit": "c0ffee", "port": 8080, "functions": self.functions,
            "python_image": IMAGE,
            "has_requirements": os.path.exists(os.path.join(self.ctx, "requirements.txt")),
            "has_pyproject": os.path.exists(os.path.join(self.ctx, "pyproject.toml")),
            "deps_seed": "",
        }

    def build_base(self, tag):
        build = os.path.join(self.ctx, ".eserveless-build")
        shutil.rmtree(build, ignore_errors=True)
        os.makedirs(build)
        base = os.path.join(RUNTIMES, "base")
        for name in os.listdir(base):
            if not os.path.isfile(os.path.join(base, name)):
                continue
            with open(os.path.join(base, name)) as f:
                src = f.read()
            with open(os.path.join(build, name), "w") as f:
                f.write(render(src, self.variables()))
        self.images.append(tag)
        return docker("build", "--pull=false", "--force-rm", "-t", tag, "-f", os.path.join(build, "Dockerfile"), self.ctx,
                      check=False, env=dict(os.environ, DOCKER_BUILDKIT="0"))

    def build_fn(self, base_tag, name, kind):
        with open(os.path.join(RUNTIMES, kind, "Dockerfile")) as f:
            src = render(f.read(), {"function": name, "kind": kind, "project": "pytest", "commit": "c0ffee",
                                    "port": 8080, "base_image": base_tag})
        tag = "%s-%s:%s" % (TAG, name.lower(), kind)
        self.images.append(tag)
        docker("build", "--pull=false", "-t", tag, "-", input=src, env=dict(os.environ, DOCKER_BUILDKIT="0"))
        return tag

    def cleanup(self):
        for tag in self.images:
            docker("rmi", "-f", tag, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def sandbox_args():
    return ["--read-only", "--tmpfs", "/tmp", "--user", "65534:65534", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]


class ImageTest(unittest.TestCase):
    def setUp(self):
        need_docker(self)
        self.containers = []
        self.projects = []

    def tearDown(self):
        for c in self.containers:
            docker("rm", "-f", c, check=False)
        for p in self.projects:
            p.cleanup()

    def project(self, fixture, functions):
        p = Project(fixture, functions)
        self.projects.append(p)
        return p

    def run_http(self, tag, env=()):
        args = ["run", "-d", "-p", "127.0.0.1::8080"] + sandbox_args()
        for e in env:
            args += ["-e", e]
        cid = docker(*(args + [tag])).stdout.strip()
        self.containers.append(cid)
        port = int(docker("port", cid, "8080/tcp").stdout.split(":")[-1])
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/ready" % port, timeout=2) as r:
                    r.read()
                    return cid, port
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(docker("logs", cid, check=False).stderr)
                time.sleep(0.1)

    def test_suite_inside_image_as_the_sandbox_runs_it(self):
        # Flask and Starlette come from PyPI, installed into /tmp (the root is read-only).
        script = ("python3 -m pip install -q --no-cache-dir --target /tmp/pydeps flask starlette "
                  "&& cd /src && PYTHONPATH=/tmp/pydeps python3 -m unittest discover -s tests/runtimes/python")
        r = docker("run", "--rm", "-v", "%s:/src:ro" % REPO, *sandbox_args(), "-e", "HOME=/tmp",
                   "-e", "PYRT_IN_IMAGE=1", "-e", "PYRT_REQUIRE_FLASK=1", IMAGE, "sh", "-c", script,
                   check=False)
        self.assertEqual(r.returncode, 0, r.stdout[-4000:] + r.stderr[-6000:])
        self.assertRegex(r.stderr, r"\nOK")

    def test_plain_app_builds_runs_and_reuses_the_install_layer(self):
        fns = [{"name": "API", "kind": "http"}, {"name": "Stream", "kind": "http"}, {"name": "Ticker", "kind": "cron"}]
        p = self.project("python-app", fns)
        r = p.build_base(TAG + "-base:1")
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr)
        self.assertIn("python3 /app/.eserveless-build/check.py API:http Stream:http Ticker:cron", r.stdout)
        api = p.build_fn(TAG + "-base:1", "API", "http")
        labels = docker("inspect", "-f", "{{json .Config.Labels}}", api).stdout
        self.assertIn('"eserveless.function":"API"', labels)
        cid, port = self.run_http(api, ["ESERVELESS_GREETING=hello", "ESERVELESS_SOCKET=/tmp/.eserveless-http.sock"])
        req = urllib.request.Request("http://127.0.0.1:%d/p/q?x=1" % port, data=b"body!", method="POST",
                                     headers={"X-Forwarded-For": "9.9.9.9"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            import json
            got = json.loads(resp.read())
            self.assertEqual(resp.headers["X-Function"], "API")
        self.assertEqual((got["method"], got["path"], got["query"], got["body"]), ("POST", "/p/q", "x=1", "body!"))
        self.assertEqual(got["headers"]["x-forwarded-for"], "9.9.9.9")
        self.assertEqual(got["env"]["ESERVELESS_GREETING"], "hello")
        self.assertTrue(got["six"])
        # The Unix socket is there, and answers (from inside the container).
        out = docker("exec", cid, "python3", "-c",
                     "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/tmp/.eserveless-http.sock');"
                     "s.sendall(b'GET /u HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');"
                     "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())").stdout
        self.assertIn('"transport": "unix"', out)
        # SIGTERM as PID 1: exit 0 within 2 s.
        t0 = time.monotonic()
        docker("stop", "-t", "10", cid)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertEqual(docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip(), "0")
        # cron
        tick = p.build_fn(TAG + "-base:1", "Ticker", "cron")
        r = docker("run", "--rm", *sandbox_args(), "-e", "ESERVELESS_TARGET=world", tick)
        self.assertEqual(r.stdout.strip(), 'TICK {"ESERVELESS_TARGET":"world"}')
        # A one-line change: the pip layer comes from the cache, the check runs again.
        path = os.path.join(p.ctx, "functions.py")
        with open(path) as f:
            src = f.read()
        with open(path, "w") as f:
            f.write(src.replace('VERSION = "v1"', 'VERSION = "v2"'))
        t0 = time.monotonic()
        r = p.build_base(TAG + "-base:2")
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        steps = r.stdout.split("\nStep ")
        pip = [s for s in steps if "pip install" in s.split("\n")[0] and "requirements" in s.split("\n")[0]]
        self.assertEqual(len(pip), 1, r.stdout)
        self.assertIn("Using cache", pip[0])
        check = [s for s in steps if "check.py" in s.split("\n")[0]]
        self.assertNotIn("Using cache", check[0])
        print("\n  python-app rebuild after a one-line change: %.1f s" % took)

    def test_pyproject_dependencies_layer(self):
        d = tempfile.mkdtemp(prefix="eserveless-pyproj-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "pyproject.toml"), "w") as f:
            # A fresh description each run: the install layer of an earlier run is not reused.
            f.write('[project]\nname = "demo"\nversion = "1"\ndescription = "%s"\ndependencies = ["six>=1.16"]\n'
                    % os.urandom(6).hex())
        with open(os.path.join(d, "functions.py"), "w") as f:
            f.write('import six\nX = 1\ndef API(request):\n    return {"six": six.PY3, "x": X}\n')
        p = self.project(d, [{"name": "API", "kind": "http"}])
        r = p.build_base(TAG + "-base:pp1")
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr)
        self.assertIn("Successfully installed six", r.stdout)
        with open(os.path.join(p.ctx, "functions.py"), "a") as f:
            f.write("X = 2\n")
        r = p.build_base(TAG + "-base:pp2")
        self.assertEqual(r.returncode, 0, r.stderr)
        pip = [s for s in r.stdout.split("\nStep ") if "pip install" in s.split("\n")[0] and "requirements" in s.split("\n")[0]]
        self.assertIn("Using cache", pip[0])
        api = p.build_fn(TAG + "-base:pp2", "API", "http")
        cid, port = self.run_http(api)
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=10) as resp:
            self.assertEqual(resp.read(), b'{"six": true, "x": 2}')

    def test_flask_fixture(self):
        p = self.project("python-flask", [{"name": "API", "kind": "http"}])
        r = p.build_base(TAG + "-base:flask")
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr)
        api = p.build_fn(TAG + "-base:flask", "API", "http")
        cid, port = self.run_http(api, ["ESERVELESS_GREETING=hello"])
        import json
        with urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/a/b?c=d" % port, data=b"xyz"),
                                    timeout=10) as resp:
            got = json.loads(resp.read())
        self.assertEqual((got["runtime"], got["method"], got["path"], got["query"], got["body"]),
                         ("python-flask", "POST", "/a/b", "c=d", "xyz"))
        self.assertEqual(got["env"], {"ESERVELESS_GREETING": "hello"})
        with urllib.request.urlopen("http://127.0.0.1:%d/stream?chunks=3" % port, timeout=10) as resp:
            self.assertEqual(resp.read(), b"chunk 0\nchunk 1\nchunk 2\n")

    def test_build_errors(self):
        p = self.project("python-app", [{"name": "API", "kind": "http"}, {"name": "Nope", "kind": "http"}])
        os.remove(os.path.join(p.ctx, "requirements.txt"))
        with open(os.path.join(p.ctx, "functions.py")) as f:
            src = f.read()
        with open(os.path.join(p.ctx, "functions.py"), "w") as f:
            f.write(src.replace("import six", "six = None"))
        r = p.build_base(TAG + "-base:bad")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('eserveless: function "Nope" is not exported by functions.py (it exports: API, Stream, Ticker)',
                      r.stdout + r.stderr)
        p.functions = [{"name": "API", "kind": "http"}]
        with open(os.path.join(p.ctx, "functions.py"), "w") as f:
            f.write(src.replace("import six", "import six_is_not_installed"))
        r = p.build_base(TAG + "-base:bad")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("eserveless: functions.py failed to load: ModuleNotFoundError: "
                      "No module named 'six_is_not_installed' (functions.py:7)", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()

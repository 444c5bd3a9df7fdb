"""Tests of the python runtime's wrappers (runtimes/python/base): server.py, cron.py,
check.py, run against small functions.py fixtures without Docker.

    python3 -m unittest discover -s tests/runtimes/python -v

The wrappers need h11: the tests use the first interpreter that has it among
$ESERVELESS_TEST_PYTHON, this one, and /usr/bin/python3 (Debian's python3-h11).
Inside the python image they run as uid 65534 on a read-only root (test_image.py).
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
RUNTIME = os.path.join(REPO, "runtimes", "python", "base")
FIXTURE = os.path.join(HERE, "apps", "functions.py")
MiB = 1024 * 1024


def find_python():
    for exe in (os.environ.get("ESERVELESS_TEST_PYTHON"), sys.executable, "/usr/bin/python3"):
        if exe and os.path.exists(exe) and subprocess.run([exe, "-c", "import h11"], capture_output=True).returncode == 0:
            return exe
    raise RuntimeError("no python3 with h11 found (apt-get install python3-h11, or set ESERVELESS_TEST_PYTHON)")


PYTHON = find_python()


def clean_env():
    # The functions see every ESERVELESS_* variable: none of the caller's.
    return {k: v for k, v in os.environ.items() if not k.startswith("ESERVELESS_")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_app(root, functions_src=None, extra=None):
    """root/app/functions.py + root/app/.eserveless-build/<wrappers>, the image's layout."""
    app = os.path.join(root, "app")
    build = os.path.join(app, ".eserveless-build")
    os.makedirs(build, exist_ok=True)
    for name in os.listdir(RUNTIME):
        if name.endswith(".py"):
            shutil.copy(os.path.join(RUNTIME, name), build)
    if functions_src is None:
        shutil.copy(FIXTURE, os.path.join(app, "functions.py"))
    elif functions_src is not False:
        with open(os.path.join(app, "functions.py"), "w") as f:
            f.write(textwrap.dedent(functions_src))
    for name, src in (extra or {}).items():
        with open(os.path.join(app, name), "w") as f:
            f.write(textwrap.dedent(src))
    return app


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Server:
    """server.py NAME started on a free port and a Unix socket."""

    def __init__(self, root, name, env=None):
        self.root = root
        self.app = os.path.join(root, "app")
        self.port = free_port()
        self.sock = os.path.join(root, "http.sock")
        self.stderr_path = os.path.join(root, "stderr-%s.log" % name)
        e = dict(clean_env(), PORT=str(self.port), ESERVELESS_SOCKET=self.sock, HOME=tempfile.gettempdir())
        e.update(env or {})
        self.errf = open(self.stderr_path, "w+")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([PYTHON, os.path.join(self.app, ".eserveless-build", "server.py"), name],
                                     env=e, stdout=subprocess.PIPE, stderr=self.errf, cwd=root)
        deadline = t0 + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("server %s did not start: %s" % (name, self.stderr()))
                time.sleep(0.002)
        self.startup = time.monotonic() - t0

    def stderr(self):
        self.errf.flush()
        with open(self.stderr_path) as f:
            return f.read()

    def conn(self, timeout=20):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, unix=False):
        c = UnixHTTPConnection(self.sock) if unix else self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.errf.close()


class Base(unittest.TestCase):
    functions_src = None
    extra_files = None

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="eserveless-py-")
        make_app(self.root, self.functions_src, self.extra_files)
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def serve(self, name, env=None):
        s = Server(self.root, name, env)
        self.servers.append(s)
        return s


class PlainTest(Base):
    def test_echo_tcp_and_unix_socket(self):
        s = self.serve("Echo", {"ESERVELESS_GREETING": "hello"})
        status, headers, body = s.request("POST", "/a/b%20c?x=1&x=2&y=", body=b"hi there",
                                          headers={"X-Test": "t", "X-Forwarded-For": "1.2.3.4"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        got = json.loads(body)
        self.assertEqual(got["method"], "POST")
        self.assertEqual(got["path"], "/a/b%20c")
        self.assertEqual(got["url"], "/a/b%20c?x=1&x=2&y=")
        self.assertEqual(got["query"], {"x": ["1", "2"], "y": [""]})
        self.assertEqual(got["query_string"], "x=1&x=2&y=")
        self.assertEqual(got["x_test"], "t")  # case-insensitive lookup
        self.assertEqual(got["headers"]["x-forwarded-for"], "1.2.3.4")
        self.assertEqual(got["body"], "hi there")
        self.assertEqual(got["transport"], "tcp")
        self.assertEqual(got["env"], {"ESERVELESS_GREETING": "hello", "ESERVELESS_SOCKET": s.sock})
        status, _, body = s.request("GET", "/over/unix", unix=True)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["transport"], "unix")

    def test_return_types(self):
        cases = {
            "Text": (200, "text/plain; charset=utf-8", "héllo".encode()),
            "Bytes": (200, "application/octet-stream", b"\x00\x01\xff"),
            "Json": (200, "application/json", b'[1, 2, {"a": null}]'),
            "Nothing": (204, None, b""),
            "Status": (201, "text/plain; charset=utf-8", b"created"),
            "WithHeaders": (202, "application/vnd.test+json", b'{"ok": true}'),
            "NoArgs": (200, "text/plain; charset=utf-8", b"no args"),
        }
        for name, (want_status, want_type, want_body) in cases.items():
            with self.subTest(name):
                s = self.serve(name)
                status, headers, body = s.request("GET", "/")
                self.assertEqual(status, want_status)
                self.assertEqual(headers.get("content-type"), want_type)
                self.assertEqual(body, want_body)
                if name == "WithHeaders":
                    self.assertEqual(headers["x-test"], "yes")
                if want_status != 204:
                    self.assertEqual(headers["content-length"], str(len(want_body)))
                s.stop()

    def test_async_function_and_json(self):
        s = self.serve("Async")
        status, _, body = s.request("POST", "/", body=b'{"k": [1]}', headers={"Content-Type": "application/json"})
        self.assertEqual((status, json.loads(body)), (200, {"async": True, "json": {"k": [1]}}))

    def test_keep_alive_and_chunked_request(self):
        s = self.serve("Hash")
        c = s.conn()
        data = [b"part-%d;" % i for i in range(50)]
        c.request("POST", "/", body=iter(data), encode_chunked=True)
        r = c.getresponse()
        self.assertEqual(json.loads(r.read())["sha256"], hashlib.sha256(b"".join(data)).hexdigest())
        first = c.sock
        c.request("POST", "/", body=b"again")
        r = c.getresponse()
        self.assertEqual(json.loads(r.read())["length"], 5)
        self.assertIs(c.sock, first, "the connection was not kept alive")
        c.close()

    def assert_streams(self, s, path, want):
        c = s.conn()
        t0 = time.monotonic()
        c.request("GET", path)
        r = c.getresponse()
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        first = r.readline()
        t_first = time.monotonic() - t0
        rest = r.read()
        t_all = time.monotonic() - t0
        c.close()
        self.assertEqual(first + rest, want)
        self.assertLess(t_first, 0.4, "the first chunk waited for the others")
        self.assertGreater(t_all, 0.9)

    def test_streaming_generator(self):
        self.assert_streams(self.serve("Stream"), "/?n=3", b"chunk 0\nchunk 1\nchunk 2\n")

    def test_streaming_async_generator(self):
        self.assert_streams(self.serve("AStream"), "/", b"a0\na1\na2\n")

    def test_20mb_in_and_out(self):
        s = self.serve("Hash")
        data = os.urandom(20 * MiB)
        status, _, body = s.request("POST", "/", body=data)
        self.assertEqual(json.loads(body), {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        s.stop()
        for name in ("BigBytes", "BigStream"):
            s = self.serve(name)
            status, headers, body = s.request("GET", "/")
            self.assertEqual((status, len(body)), (200, 20 * MiB), name)

    def test_exception_is_500_with_traceback(self):
        s = self.serve("Boom")
        status, _, body = s.request("GET", "/x?y=1")
        self.assertEqual(status, 500)
        self.assertEqual(body, b"Internal Server Error\n")
        err = s.stderr()
        self.assertIn('eserveless: function "Boom" failed on GET /x?y=1', err)
        self.assertIn("Traceback (most recent call last)", err)
        self.assertIn("ValueError: boom here", err)
        # The server survives.
        self.assertEqual(s.request("GET", "/")[0], 500)

    def test_exception_mid_stream_closes_the_connection(self):
        s = self.serve("BoomStream")
        c = s.conn()
        c.request("GET", "/")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        with self.assertRaises(http.client.IncompleteRead):
            r.read()
        c.close()
        self.assertIn("ValueError: boom mid-stream", s.stderr())

    def test_sigterm_exits_0_quickly(self):
        s = self.serve("Slow")
        idle = s.conn()
        idle.request("GET", "/?s=0")
        idle.getresponse().read()  # an idle keep-alive connection stays open
        busy = s.conn()
        busy.request("GET", "/?s=30")  # and a request that outlasts the grace period
        time.sleep(0.2)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(5)
        took = time.monotonic() - t0
        self.assertEqual(code, 0)
        self.assertLess(took, 2.0)
        idle.close()
        busy.close()

    def test_sigint_exits_0(self):
        s = self.serve("Text")
        s.proc.send_signal(signal.SIGINT)
        self.assertEqual(s.proc.wait(3), 0)

    def test_bad_request_gets_400(self):
        s = self.serve("Text")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            self.assertTrue(c.recv(100).startswith(b"HTTP/1.1 400 "))

    def test_expect_100_continue(self):
        s = self.serve("Hash")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            self.assertTrue(c.recv(100).startswith(b"HTTP/1.1 100 "))
            c.sendall(b"abc")
            got = b""
            while b'"length": 3' not in got:
                more = c.recv(1000)
                if not more:
                    break
                got += more
            self.assertIn(b'"length": 3', got)

    def test_sync_functions_run_concurrently(self):
        s = self.serve("Slow")
        results = []

        def one():
            results.append(s.request("GET", "/?s=0.5")[0])

        threads = [threading.Thread(target=one) for _ in range(10)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 10)
        self.assertLess(time.monotonic() - t0, 2.0)

    def test_client_gone_stops_the_stream(self):
        s = self.serve("Endless")
        c = s.conn()
        c.request("GET", "/")
        r = c.getresponse()
        self.assertEqual(r.readline(), b"tick 0\n")
        c.close()
        r.close()
        deadline = time.monotonic() + 5
        while "ENDLESS CLOSED" not in s.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("ENDLESS CLOSED", s.stderr())
        self.assertNotIn("Traceback", s.stderr())  # a client leaving is not an error

    def test_http_1_0(self):
        s = self.serve("Text")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            got = b"".join(iter(lambda: c.recv(65536), b""))
        self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got)
        self.assertTrue(got.endswith("héllo".encode()), got)

    def test_head_has_no_body(self):
        s = self.serve("Text")
        status, headers, body = s.request("HEAD", "/")
        self.assertEqual((status, body), (200, b""))


class ShadowTest(Base):
    """The user's modules named like the wrappers' or like stdlib modules the
    server imports late are the user's business, and break nothing."""

    functions_src = """
        import server, check, http
        def API(request):
            return {"server": server.NAME, "check": check.NAME, "http": http.NAME}
    """
    extra_files = {name + ".py": "NAME = %r\n" % name for name in ("server", "check", "http")}

    def test_user_modules_win(self):
        s = self.serve("API")
        status, _, body = s.request("GET", "/")
        self.assertEqual((status, json.loads(body)), (200, {"server": "server", "check": "check", "http": "http"}))
        status, _, body = s.request("GET", "/", headers={"Expect": "100-continue"})
        self.assertEqual(status, 200)


class WsgiTest(Base):
    def test_wsgi_app(self):
        s = self.serve("Wsgi")
        data = os.urandom(20 * MiB)
        status, headers, body = s.request("PUT", "/p/%C3%A9?q=1", body=data, headers={"X-Test": "w"})
        got = json.loads(body)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], str(len(body)))  # single-item list: sized
        self.assertEqual(got["method"], "PUT")
        self.assertEqual(got["path"], "/p/\xc3\xa9")  # PEP 3333: decoded bytes as latin-1
        self.assertEqual(got["query"], "q=1")
        self.assertEqual(got["x_test"], "w")
        self.assertEqual((got["length"], got["sha256"]), (len(data), hashlib.sha256(data).hexdigest()))

    def test_wsgi_echo_20mb_bounded_memory(self):
        s = self.serve("WsgiEcho")
        data = os.urandom(20 * MiB)
        # The answer flows back while the body is still being sent: the body is sent
        # from a thread (http.client would send all of it before reading anything,
        # and with bounded buffers on both sides that never ends).
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=20)
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data)
        sender = threading.Thread(target=sock.sendall, args=(head + data,))
        sender.start()
        r = http.client.HTTPResponse(sock)
        r.begin()
        status, body = r.status, r.read()
        sender.join()
        sock.close()
        self.assertEqual(status, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        with open("/proc/%d/status" % s.proc.pid) as f:
            hwm = int([l for l in f if l.startswith("VmHWM:")][0].split()[1]) // 1024
        self.assertLess(hwm, 60, "peak RSS %d MiB: the body was buffered" % hwm)

    def test_wsgi_streaming(self):
        PlainTest.assert_streams(self, self.serve("WsgiStream"), "/", b"w0\nw1\nw2\n")

    def test_wsgi_exception(self):
        s = self.serve("WsgiBoom")
        self.assertEqual(s.request("GET", "/")[0], 500)
        self.assertIn("RuntimeError: wsgi boom", s.stderr())


class AsgiTest(Base):
    def test_raw_asgi_app(self):
        s = self.serve("Asgi")
        data = os.urandom(20 * MiB)
        status, _, body = s.request("POST", "/x%20y?z=2", body=data)
        got = json.loads(body)
        self.assertEqual((status, got["path"], got["query"], got["method"]), (200, "/x y", "z=2", "POST"))
        self.assertEqual((got["length"], got["sha256"]), (len(data), hashlib.sha256(data).hexdigest()))
        PlainTest.assert_streams(self, s, "/stream", b"s0\ns1\ns2\n")
        self.assertEqual(s.request("GET", "/boom")[0], 500)
        self.assertIn("RuntimeError: asgi boom", s.stderr())

    def test_lifespan(self):
        s = self.serve("Lifespan")
        status, _, body = s.request("GET", "/")
        self.assertEqual(json.loads(body), {"state": "yes"})
        s.proc.send_signal(signal.SIGTERM)
        self.assertEqual(s.proc.wait(3), 0)
        self.assertIn(b"LIFESPAN SHUTDOWN", s.proc.stdout.read())


def require_module(test, name):
    """Skips `test` when PYTHON cannot import `name`, except in the image run (test_image.py,
    which CI requires and which installs it), where that fails it."""
    if subprocess.run([PYTHON, "-c", "import " + name], capture_output=True).returncode != 0:
        if os.environ.get("PYRT_REQUIRE_FLASK"):
            test.fail("%s is not importable by %s" % (name, PYTHON))
        test.skipTest("%s not installed (test_image.py runs this inside the image with it)" % name)


class FlaskTest(Base):
    functions_src = """
        from flask import Flask, Response, request
        app = Flask(__name__)

        @app.route("/", defaults={"p": ""}, methods=["GET", "POST"])
        @app.route("/<path:p>", methods=["GET", "POST"])
        def index(p):
            if p == "stream":
                return Response((b"f%d\\n" % i for i in range(3)), mimetype="text/plain")
            return {"path": request.path, "args": request.args.to_dict(), "length": len(request.get_data())}

        API = app
    """

    def setUp(self):
        require_module(self, "flask")
        super().setUp()

    def test_flask_app(self):
        s = self.serve("API")
        status, headers, body = s.request("POST", "/some/where?a=b", body=b"12345")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"path": "/some/where", "args": {"a": "b"}, "length": 5})
        status, _, body = s.request("GET", "/stream")
        self.assertEqual(body, b"f0\nf1\nf2\n")
        self.assertEqual(s.request("GET", "/nope/../x")[0], 200)


class StarletteTest(Base):
    functions_src = """
        import asyncio
        from contextlib import asynccontextmanager
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def echo(request):
            body = await request.body()
            return JSONResponse({"path": request.url.path, "q": dict(request.query_params), "length": len(body),
                                 "started": request.state.started})

        async def stream(request):
            async def gen():
                for i in range(3):
                    if i:
                        await asyncio.sleep(0.5)
                    yield "st%d\\n" % i
            return StreamingResponse(gen(), media_type="text/plain")

        @asynccontextmanager
        async def lifespan(app):
            yield {"started": "yes"}

        API = Starlette(routes=[Route("/stream", stream), Route("/{p:path}", echo, methods=["GET", "POST"])],
                        lifespan=lifespan)
    """

    def setUp(self):
        require_module(self, "starlette")
        super().setUp()

    def test_starlette_app(self):
        s = self.serve("API")
        status, _, body = s.request("POST", "/a/b?x=1", body=b"123")
        self.assertEqual((status, json.loads(body)), (200, {"path": "/a/b", "q": {"x": "1"}, "length": 3, "started": "yes"}))
        PlainTest.assert_streams(self, s, "/stream", b"st0\nst1\nst2\n")


class CronTest(Base):
    def run_cron(self, name, env=None):
        e = dict(clean_env(), HOME=tempfile.gettempdir(), ESERVELESS_TARGET="world")
        e.update(env or {})
        return subprocess.run([PYTHON, os.path.join(self.root, "app", ".eserveless-build", "cron.py"), name],
                              env=e, capture_output=True, text=True, timeout=30)

    def test_success(self):
        r = self.run_cron("Ticker")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('TICK {"ESERVELESS_TARGET": "world"}', r.stdout)

    def test_async(self):
        r = self.run_cron("ATicker")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('ATICK {"ESERVELESS_TARGET": "world"}', r.stdout)

    def test_exception(self):
        r = self.run_cron("TickerFail")
        self.assertEqual(r.returncode, 1)
        self.assertIn("Traceback (most recent call last)", r.stderr)
        self.assertIn("RuntimeError: cron failed on purpose", r.stderr)

    def test_missing(self):
        r = self.run_cron("Nope")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith('eserveless: function "Nope" is not exported by functions.py'), r.stderr)


class CheckTest(unittest.TestCase):
    def check(self, src, *specs, extra=None):
        root = tempfile.mkdtemp(prefix="eserveless-pycheck-")
        try:
            app = make_app(root, src, extra)
            r = subprocess.run([PYTHON, os.path.join(app, ".eserveless-build", "check.py")] + list(specs),
                               capture_output=True, text=True, timeout=30, cwd=app)
            return r.returncode, r.stderr
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_ok(self):
        self.assertEqual(self.check(None, "Echo:http", "Wsgi:http", "Asgi:http", "Lifespan:http", "Ticker:cron"), (0, ""))

    def test_missing_lists_exports(self):
        code, err = self.check("from os import path\nimport json\ndef API(r): pass\ndef Ticker(e): pass\n_private = 1\n",
                               "API:http", "Nope:http")
        self.assertEqual(code, 1)
        self.assertEqual(err, 'eserveless: function "Nope" is not exported by functions.py (it exports: API, Ticker)\n')
        code, err = self.check("def API(r): pass\n", "A:http", "B:cron")
        self.assertEqual(err.splitlines()[0],
                         'eserveless: functions "A", "B" are not exported by functions.py (it exports: API)')

    def test_syntax_error_names_file_and_line(self):
        code, err = self.check("def API(r):\n    return 1\n\ndef Broken(:\n    pass\n", "API:http")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("eserveless: functions.py failed to load: SyntaxError: "), err)
        self.assertIn("(functions.py:4)", err.splitlines()[0])

    def test_syntax_error_in_an_imported_module(self):
        code, err = self.check("import helper\ndef API(r): pass\n", "API:http", extra={"helper.py": "x = (\n"})
        self.assertEqual(code, 1)
        self.assertIn("SyntaxError", err.splitlines()[0])
        self.assertIn("(helper.py:1)", err.splitlines()[0])

    def test_import_error_names_file_and_line(self):
        code, err = self.check("import os\nimport no_such_module_xyz\ndef API(r): pass\n", "API:http")
        self.assertEqual(code, 1)
        self.assertEqual(err.splitlines()[0], "eserveless: functions.py failed to load: "
                         "ModuleNotFoundError: No module named 'no_such_module_xyz' (functions.py:2)")

    def test_exception_at_load(self):
        code, err = self.check("def API(r): pass\nraise RuntimeError('bad config')\n", "API:http")
        self.assertEqual(err.splitlines()[0],
                         "eserveless: functions.py failed to load: RuntimeError: bad config (functions.py:2)")

    def test_missing_file(self):
        code, err = self.check(False, "API:http")
        self.assertEqual((code, err), (1, "eserveless: functions.py is missing at the root of the repository\n"))

    def test_not_callable_and_bad_signature(self):
        code, err = self.check("API = 42\n", "API:http")
        self.assertEqual(err, 'eserveless: "API" in functions.py is not a function (it is a int)\n')
        code, err = self.check("def API(a, b, c): pass\n", "API:http")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith('eserveless: function "API" cannot serve http: it takes 3 required arguments'), err)

    def test_does_not_wait_for_threads(self):
        src = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\ndef API(r): pass\n"
        t0 = time.monotonic()
        self.assertEqual(self.check(src, "API:http"), (0, ""))
        self.assertLess(time.monotonic() - t0, 10)


class KindTest(unittest.TestCase):
    """The plain / WSGI / ASGI rule (eserveless_loader.http_kind)."""

    def test_rule(self):
        # No __pycache__ in runtimes/: every file there is a template the server embeds.
        sys.path.insert(0, RUNTIME)
        dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            import eserveless_loader as L
        finally:
            sys.path.remove(RUNTIME)
            sys.dont_write_bytecode = dont_write

        def plain(request): pass
        def zero(): pass
        async def aplain(request): pass
        def wsgi(environ, start_response): pass
        async def asgi(scope, receive, send): pass
        def defaults(request, extra=None, more=None): pass

        class WsgiApp:
            def __call__(self, environ, start_response): pass

        class AsgiApp:
            async def __call__(self, scope, receive, send): pass

        for fn, kind in ((plain, "plain"), (zero, "plain"), (aplain, "plain"), (wsgi, "wsgi"), (asgi, "asgi"),
                         (defaults, "plain"), (WsgiApp(), "wsgi"), (AsgiApp(), "asgi"), (len, "plain")):
            self.assertEqual(L.http_kind(fn), kind, fn)
        def sync3(a, b, c): pass
        async def async2(a, b): pass
        for fn in (sync3, async2):
            with self.assertRaises(L.LoadError):
                L.http_kind(fn)


class TemplateTest(unittest.TestCase):
    def test_wrappers_have_no_template_syntax(self):
        # Every file of runtimes/python/base is rendered by minijinja: the python
        # wrappers must come out unchanged.
        for name in os.listdir(RUNTIME):
            if name.endswith(".py"):
                with open(os.path.join(RUNTIME, name)) as f:
                    src = f.read()
                for tag in ("{{", "{%", "{#"):
                    self.assertNotIn(tag, src, name)


if __name__ == "__main__":
    unittest.main()

# Fixture for tests/runtimes/python/test_runtime.py: one functions.py exporting a
# function per case (each test starts server.py or cron.py with one of the names).
import asyncio
import hashlib
import json
import os
import sys
import time

MiB = 1024 * 1024


def Echo(request):
    return {
        "method": request.method,
        "path": request.path,
        "url": request.url,
        "query": request.query,
        "query_string": request.query_string,
        "headers": dict(request.headers.items()),
        "x_test": request.headers.get("X-TEST"),
        "body": request.text,
        "transport": "tcp" if request.client else "unix",
        "env": {k: v for k, v in os.environ.items() if k.startswith("ESERVELESS_")},
    }


def Text(request):
    return "héllo"


def Bytes(request):
    return b"\x00\x01\xff"


def Json(request):
    return [1, 2, {"a": None}]


def Nothing(request):
    return None


def Status(request):
    return "created", 201


def WithHeaders(request):
    return {"ok": True}, 202, {"X-Test": "yes", "Content-Type": "application/vnd.test+json"}


def NoArgs():
    return "no args"


async def Async(request):
    await asyncio.sleep(0.01)
    return {"async": True, "json": request.json()}


def Stream(request):
    # Chunks 0.5 s apart: the test checks the first arrives long before the last.
    for i in range(int(request.query.get("n", ["3"])[0])):
        if i:
            time.sleep(0.5)
        yield "chunk %d\n" % i


async def AStream(request):
    for i in range(3):
        if i:
            await asyncio.sleep(0.5)
        yield b"a%d\n" % i


def Hash(request):
    return {"length": len(request.body), "sha256": hashlib.sha256(request.body).hexdigest()}


def BigBytes(request):
    return b"x" * (20 * MiB)


def BigStream(request):
    block = bytes(range(256)) * 256  # 64 KiB
    for _ in range(20 * MiB // len(block)):
        yield block


def Boom(request):
    raise ValueError("boom here")


def BoomStream(request):
    yield "first\n"
    time.sleep(0.2)
    raise ValueError("boom mid-stream")


def Slow(request):
    time.sleep(float(request.query.get("s", ["1"])[0]))
    return "slept"


# ---- WSGI


def Wsgi(environ, start_response):
    h = hashlib.sha256()
    n = 0
    inp = environ["wsgi.input"]
    while True:
        block = inp.read(65536)
        if not block:
            break
        n += len(block)
        h.update(block)
    body = json.dumps({
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "x_test": environ.get("HTTP_X_TEST"),
        "length": n,
        "sha256": h.hexdigest(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def WsgiEcho(environ, start_response):
    # The body back as it arrives: bounded memory both ways.
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    inp = environ["wsgi.input"]

    def gen():
        while True:
            block = inp.read(65536)
            if not block:
                return
            yield block

    return gen()


def WsgiStream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(3):
            if i:
                time.sleep(0.5)
            yield b"w%d\n" % i

    return gen()


def WsgiBoom(environ, start_response):
    raise RuntimeError("wsgi boom")


# ---- ASGI


async def Asgi(scope, receive, send):
    # A raw ASGI app without lifespan support (raises on other scope types).
    assert scope["type"] == "http", scope["type"]
    h = hashlib.sha256()
    n = 0
    more = True
    while more:
        msg = await receive()
        h.update(msg.get("body", b""))
        n += len(msg.get("body", b""))
        more = msg.get("more_body", False)
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            if i:
                await asyncio.sleep(0.5)
            await send({"type": "http.response.body", "body": b"s%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/boom":
        raise RuntimeError("asgi boom")
    body = json.dumps({"path": scope["path"], "query": scope["query_string"].decode(), "length": n, "sha256": h.hexdigest(),
                       "method": scope["method"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class LifespanApp:
    """An ASGI app with lifespan: the state set at startup reaches requests."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    scope["state"]["started"] = "yes"
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    print("LIFESPAN SHUTDOWN", flush=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = json.dumps({"state": scope.get("state", {}).get("started")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


Lifespan = LifespanApp()

# ---- cron


def Ticker(envs):
    print("TICK " + json.dumps(envs, sort_keys=True))


def TickerFail(envs):
    raise RuntimeError("cron failed on purpose")


async def ATicker(envs):
    await asyncio.sleep(0)
    print("ATICK " + json.dumps(envs, sort_keys=True))


NotCallable = 42


def Endless(request):
    # Streams until the client goes away; the generator's finally shows it was closed.
    try:
        i = 0
        while True:
            yield "tick %d\n" % i
            i += 1
            time.sleep(0.05)
    finally:
        sys.stderr.write("ENDLESS CLOSED after %d\n" % i)
        sys.stderr.flush()

# eserveless: the HTTP server behind server.py (a module, so its .pyc is used:
# a script run as __main__ is compiled again at every start, ~6 ms for this file).
# Serves every path and method with the object that functions.py exports under the
# name in argv[1], on the Unix socket $ESERVELESS_SOCKET (when set, bound first: the
# gateway's fast path) and then on 0.0.0.0:$PORT (open port = ready).
#
# What the exported object is decides how it is called (see http_kind in
# eserveless_loader.py and runtimes/README.md):
#   plain  API(request) -> str | bytes | dict | list | None | (body, status[, headers])
#          | iterator/generator of str/bytes (streamed); may be async
#   wsgi   app(environ, start_response)        (Flask, Django, Bottle), in a thread pool
#   asgi   async app(scope, receive, send)     (FastAPI, Starlette), lifespan supported
#
# asyncio + h11 (Debian's python3-h11) do the HTTP/1.1: keep-alive (120 s idle),
# chunked bodies both ways, Expect: 100-continue. Request and response bodies are
# streamed with bounded buffers where the interface allows it (WSGI wsgi.input, ASGI
# receive, streamed answers). Imports are kept to what serving needs (cold start):
# json, urllib.parse, traceback and http are imported on first use.
import asyncio
import os
import signal
import sys

import eserveless_loader as loader  # before h11: it also fixes sys.path
import h11

IDLE_TIMEOUT = 120.0  # outlive the gateway's pooled idle connections
READ_AHEAD = 256 * 1024  # unread bytes buffered per connection before reading pauses
DRAIN_LIMIT = 4 * 1024 * 1024  # unread request body discarded to keep a connection
STOP_GRACE = 1.5  # SIGTERM: in-flight requests get this long (exit within 2 s)
PORT = int(os.environ.get("PORT") or "8080")
SOCKET = os.environ.get("ESERVELESS_SOCKET", "")
NAME = sys.argv[1] if len(sys.argv) > 1 else "API"

loop = None

# Reason phrases, without importing the http module at run time (a user's own http.py
# at the root of the app would be found first).
REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 410: b"Gone",
    413: b"Content Too Large", 415: b"Unsupported Media Type", 422: b"Unprocessable Content",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}


class ClientGone(ConnectionError):
    """The client went away (or broke the protocol) mid-exchange."""


def reason(status):
    return REASONS.get(status, b"")


def log_failure(exch, exc):
    import traceback

    sys.stderr.write(
        'eserveless: function "%s" failed on %s %s:\n%s'
        % (NAME, exch.method, exch.target_str, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    )
    sys.stderr.flush()


class Server:
    def __init__(self):
        self.conns = set()
        self.stopping = False


class Conn(asyncio.Protocol):
    """One client connection: feeds h11 from the socket on demand (so reading
    pauses while the application does not consume the body) and writes with
    the transport's flow control."""

    def __init__(self, server, handler):
        self.server = server
        self.handler = handler
        self.h = h11.Connection(h11.SERVER)
        self.transport = None
        self.client = None
        self.inbox = []
        self.inbox_size = 0
        self.paused = False
        self.eof = False
        self.eof_fed = False
        self.closed = False
        self.wake = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.busy = False
        self.exchange = None

    # asyncio.Protocol callbacks
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        self.server.conns.add(self)
        loop.create_task(self.run())

    def data_received(self, data):
        self.inbox.append(data)
        self.inbox_size += len(data)
        if self.inbox_size > READ_AHEAD and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self):
        self.eof = True
        # A client that closes its side once its request is sent is gone for
        # ASGI's http.disconnect; the answer can still be written (half-close).
        if self.exchange is not None and self.exchange.body_done:
            self.exchange.disconnected.set()
        self._wake()
        return True

    def connection_lost(self, exc):
        self.closed = True
        self.eof = True
        self.can_write.set()
        if self.exchange is not None:
            self.exchange.disconnected.set()
        self.server.conns.discard(self)
        self._wake()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def _wake(self):
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    # reading and writing
    async def next_event(self, timeout=None):
        while True:
            ev = self.h.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            if self.inbox:
                data = self.inbox[0] if len(self.inbox) == 1 else b"".join(self.inbox)
                self.inbox.clear()
                self.inbox_size = 0
                if self.paused and not self.closed:
                    self.paused = False
                    self.transport.resume_reading()
                self.h.receive_data(data)
                continue
            if self.eof:
                if self.eof_fed:
                    raise ClientGone("connection closed")
                self.eof_fed = True
                self.h.receive_data(b"")
                continue
            self.wake = loop.create_future()
            try:
                if timeout is None:
                    await self.wake
                else:
                    await asyncio.wait_for(self.wake, timeout)
            finally:
                self.wake = None

    async def send(self, event):
        if self.closed:
            raise ClientGone("connection closed")
        data = self.h.send(event)
        if data:
            self.transport.write(data)
        if not self.can_write.is_set():
            await self.can_write.wait()
            if self.closed:
                raise ClientGone("connection closed")

    def close(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def run(self):
        try:
            while not self.server.stopping:
                try:
                    ev = await self.next_event(IDLE_TIMEOUT)
                except (asyncio.TimeoutError, ClientGone):
                    return
                except h11.RemoteProtocolError as exc:
                    await self.bad_request(exc)
                    return
                if not isinstance(ev, h11.Request):
                    return  # ConnectionClosed
                if any(k.lower() == b"upgrade" and b"websocket" in v.lower() for k, v in ev.headers):
                    await self.refuse_websocket()
                    return
                self.busy = True
                exch = self.exchange = Exchange(self, ev)
                try:
                    await self.handler(exch)
                finally:
                    self.busy = False
                    self.exchange = None
                if self.closed or self.server.stopping or not exch.finished:
                    return
                if self.h.their_state is h11.SEND_BODY and not await self.drain():
                    return
                if self.h.our_state is not h11.DONE or self.h.their_state is not h11.DONE:
                    return  # Connection: close, HTTP/1.0, ...
                self.h.start_next_cycle()
        except (ClientGone, ConnectionError, h11.RemoteProtocolError):
            pass
        except Exception as exc:  # a bug here: log it, drop the connection
            import traceback

            sys.stderr.write("eserveless: connection error: %s" % "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        finally:
            self.close()

    async def drain(self):
        # The answer went out before the request body was read: discard the
        # rest (up to DRAIN_LIMIT) so the connection can serve the next request.
        left = DRAIN_LIMIT
        while left > 0:
            ev = await self.next_event(10.0)
            if isinstance(ev, h11.Data):
                left -= len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return True
            else:
                return False
        return False

    async def refuse_websocket(self):
        # WSGI cannot hand a connection over, and this server does not speak ASGI's
        # websocket protocol: a WebSocket handshake is refused, never half-served.
        body = (b"WebSocket is not supported by the python runtime (eserveless); "
                b"use a node or golang function for WebSocket\n")
        try:
            await self.send(h11.Response(status_code=501, reason=reason(501), headers=[
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body)), (b"connection", b"close")]))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except Exception:
            pass

    async def bad_request(self, exc):
        if self.h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = getattr(exc, "error_status_hint", 400) or 400
            body = b"Bad Request\n"
            try:
                await self.send(h11.Response(status_code=status, reason=reason(status), headers=[
                    (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body)), (b"connection", b"close")]))
                await self.send(h11.Data(data=body))
                await self.send(h11.EndOfMessage())
            except Exception:
                pass


class Exchange:
    """One request and its answer, for the three calling conventions."""

    def __init__(self, conn, req):
        self.conn = conn
        self.req = req
        self.method = req.method.decode("ascii", "replace")
        self.target = req.target
        self.target_str = req.target.decode("latin-1")
        path, _, qs = req.target.partition(b"?")
        self.raw_path = path
        self.query_string = qs
        self.started = False
        self.finished = False
        self.body_done = False
        self.pending = None
        self.no_body = self.method == "HEAD"
        self.disconnected = asyncio.Event()

    async def read(self):
        """Next piece of the request body: (bytes, more)."""
        if self.body_done:
            return b"", False
        h = self.conn.h
        if h.they_are_waiting_for_100_continue and not self.started:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            ev = self.pending or await self.conn.next_event()
            self.pending = None
            if isinstance(ev, h11.Data):
                data = bytes(ev.data)
                nxt = h.next_event()  # peek, without waiting for the network
                if isinstance(nxt, h11.EndOfMessage):
                    self.body_done = True
                    return data, False
                if nxt is not h11.NEED_DATA:
                    self.pending = nxt
                return data, True
            if isinstance(ev, h11.EndOfMessage):
                self.body_done = True
                return b"", False
        except h11.RemoteProtocolError as exc:
            raise ClientGone("bad request body: %s" % exc) from None
        raise ClientGone("connection closed during the request body")

    async def read_all(self):
        parts = []
        more = True
        while more:
            data, more = await self.read()
            if data:
                parts.append(data)
        return b"".join(parts)

    async def start(self, status, headers):
        if status in (204, 304) or status < 200:
            self.no_body = True
        await self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
        self.started = True

    async def write(self, data):
        if data and not self.no_body:
            await self.conn.send(h11.Data(data=data))

    async def end(self):
        await self.conn.send(h11.EndOfMessage())
        self.finished = True
        self.disconnected.set()  # ASGI: http.disconnect once the answer is complete

    async def fail(self, exc):
        if isinstance(exc, ClientGone) and not self.started:
            self.conn.close()
            return
        if not isinstance(exc, ClientGone):
            log_failure(self, exc)
        if self.started or self.conn.closed:
            self.conn.close()  # half an answer is out: only closing can tell the client
            return
        body = b"Internal Server Error\n"
        try:
            await self.start(500, [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))])
            await self.write(body)
            await self.end()
        except Exception:
            self.conn.close()


# ---------------------------------------------------------------- plain functions


class Headers:
    """Request headers, case-insensitive: h["content-type"], h.get(name),
    h.get_all(name); repeated headers are joined with ", " ("; " for cookie)."""

    __slots__ = ("_d",)

    def __init__(self, raw):
        d = {}
        for name, value in raw:
            d.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self._d = d

    def __getitem__(self, name):
        values = self._d[name.lower()]
        return ("; " if name.lower() == "cookie" else ", ").join(values)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def get_all(self, name):
        return list(self._d.get(name.lower(), ()))

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._d

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def keys(self):
        return self._d.keys()

    def items(self):
        return [(k, self[k]) for k in self._d]

    def values(self):
        return [self[k] for k in self._d]

    def __repr__(self):
        return "Headers(%r)" % dict(self.items())


class Request:
    """What a plain function receives. method, path (raw, without the query),
    query_string, query (dict of lists), url (path and query as sent), headers,
    body (bytes), text, json(), client ((ip, port), None on the Unix socket)."""

    def __init__(self, exch, body):
        self.method = exch.method
        self.url = exch.target_str
        self.path = exch.raw_path.decode("latin-1")
        self.query_string = exch.query_string.decode("latin-1")
        self.headers = Headers(exch.req.headers)
        self.body = body
        self.client = exch.conn.client
        self.http_version = exch.req.http_version.decode("ascii")
        self._query = None

    @property
    def query(self):
        if self._query is None:
            from urllib.parse import parse_qs

            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        if not self.body:
            return None
        import json

        return json.loads(self.body)

    def __repr__(self):
        return "<Request %s %s>" % (self.method, self.url)


_END = object()


def _header_list(headers):
    if headers is None:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]


def _encode(chunk):
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError("a streamed answer may only yield str or bytes, not %s" % type(chunk).__name__)


async def send_result(exch, result):
    status = 200
    headers = []
    if isinstance(result, tuple):
        if len(result) == 2:
            body, status = result
        elif len(result) == 3:
            body, status, headers = result
            headers = _header_list(headers)
        else:
            raise TypeError("an answer tuple is (body, status) or (body, status, headers), not %d items" % len(result))
        status = int(status)
    else:
        body = result
        if body is None:
            status = 204
    have = {k.lower() for k, _ in headers}
    ctype = None
    if body is None:
        payload = b""
    elif isinstance(body, str):
        payload, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
    elif isinstance(body, (bytes, bytearray, memoryview)):
        payload, ctype = bytes(body), "application/octet-stream"
    elif isinstance(body, (dict, list)):
        import json

        payload, ctype = json.dumps(body).encode("utf-8"), "application/json"
    elif hasattr(body, "__aiter__") or hasattr(body, "__iter__") or hasattr(body, "__next__"):
        return await send_stream(exch, body, status, headers, have)
    else:
        raise TypeError("cannot answer with a %s: return str, bytes, dict, list, None, a tuple or an iterator" % type(body).__name__)
    if ctype and "content-type" not in have:
        headers.append(("content-type", ctype))
    if "content-length" not in have and "transfer-encoding" not in have:
        headers.append(("content-length", str(len(payload))))
    await exch.start(status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])
    await exch.write(payload)
    await exch.end()


async def send_stream(exch, body, status, headers, have):
    if hasattr(body, "__aiter__"):
        it = body.__aiter__()

        async def next_chunk():
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                return _END

        async def close():
            if hasattr(it, "aclose"):
                await it.aclose()
    else:
        it = iter(body)

        async def next_chunk():
            # A sync generator may block (sleep, I/O) between chunks: not on the loop.
            return await loop.run_in_executor(None, next, it, _END)

        async def close():
            if hasattr(it, "close"):
                await loop.run_in_executor(None, it.close)

    try:
        first = await next_chunk()
        if "content-type" not in have:
            binary = first is not _END and not isinstance(first, str)
            headers.append(("content-type", "application/octet-stream" if binary else "text/plain; charset=utf-8"))
        await exch.start(status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])
        chunk = first
        while chunk is not _END:
            data = _encode(chunk)
            if data:
                await exch.write(data)
            chunk = await next_chunk()
        await exch.end()
    finally:
        await close()  # runs the generator's finally blocks, also when the client left


def plain_handler(fn):
    is_async = loader._is_async(fn)
    counts = loader._positional(fn)
    no_args = counts is not None and counts[1] == 0

    async def call(exch):
        request = Request(exch, await exch.read_all())
        args = () if no_args else (request,)
        if is_async:
            result = await fn(*args)
        else:
            result = await loop.run_in_executor(None, fn, *args)
        if hasattr(result, "__await__"):
            result = await result
        await send_result(exch, result)

    async def handle(exch):
        await answer_or_fail(exch, call(exch))

    return handle


async def answer_or_fail(exch, work):
    """Awaits the function's work; any exception (but cancellation) is answered as its failure."""
    try:
        await work
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            raise
        await exch.fail(exc)


# ---------------------------------------------------------------- WSGI


class WsgiInput:
    """wsgi.input: reads the request body from the connection as the app asks."""

    def __init__(self, exch, call):
        self.exch = exch
        self.call = call
        self.buf = bytearray()
        self.done = False

    def _fill(self):
        if self.done:
            return False
        data, more = self.call(self.exch.read())
        self.buf += data
        if not more:
            self.done = True
        return True

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read(self, size=-1):
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self.buf))
        while len(self.buf) < size and self._fill():
            pass
        return self._take(size)

    def read1(self, size=-1):
        if not self.buf:
            self._fill()
        return self._take(len(self.buf) if size is None or size < 0 else size)

    def readline(self, size=-1):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0 and (size is None or size < 0 or i < size):
                return self._take(i + 1)
            if size is not None and 0 <= size <= len(self.buf):
                return self._take(size)
            start = len(self.buf)
            if not self._fill():
                return self._take(len(self.buf))

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def wsgi_handler(app):
    from urllib.parse import unquote_to_bytes

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def run(exch, environ):  # in a worker thread
        state = {"status": None, "headers": None, "sent": False}

        def start_response(status, response_headers, exc_info=None):
            if exc_info is not None:
                try:
                    if state["sent"]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["status"] is not None:
                raise AssertionError("start_response was already called")
            state["status"] = status
            state["headers"] = response_headers
            return write

        def send_head(extra_length=None):
            if state["status"] is None:
                raise AssertionError("the WSGI app did not call start_response")
            status = int(str(state["status"]).split(" ", 1)[0])
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in state["headers"]]
            if extra_length is not None and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers):
                headers.append((b"content-length", b"%d" % extra_length))
            call(exch.start(status, headers))
            state["sent"] = True

        def write(data):
            if not state["sent"]:
                send_head()
            if data:
                call(exch.write(bytes(data)))

        result = app(environ, start_response)
        try:
            if isinstance(result, (list, tuple)) and len(result) <= 1:
                # The whole answer at once: give it a Content-Length (keep-alive without chunks).
                data = bytes(result[0]) if result else b""
                if not state["sent"]:
                    send_head(len(data))
                if data:
                    call(exch.write(data))
            else:
                for data in result:
                    if data:
                        write(data)
                if not state["sent"]:
                    send_head(0)
        finally:
            if hasattr(result, "close"):
                result.close()
        call(exch.end())

    async def handle(exch):
        conn = exch.conn
        environ = {
            "REQUEST_METHOD": exch.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(exch.raw_path).decode("latin-1"),
            "QUERY_STRING": exch.query_string.decode("latin-1"),
            "RAW_URI": exch.target_str,
            "REQUEST_URI": exch.target_str,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": str(PORT),
            "SERVER_PROTOCOL": "HTTP/" + exch.req.http_version.decode("ascii"),
            "REMOTE_ADDR": conn.client[0] if conn.client else "",
            "REMOTE_PORT": str(conn.client[1]) if conn.client else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": WsgiInput(exch, call),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        for name, value in exch.req.headers:
            key = name.decode("latin-1").upper()
            if "_" in key:
                continue  # X_Forwarded_For must not pass for X-Forwarded-For
            key = key.replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            value = value.decode("latin-1")
            if key in environ:
                value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            environ[key] = value
        await answer_or_fail(exch, loop.run_in_executor(None, run, exch, environ))

    return handle


# ---------------------------------------------------------------- ASGI


class Lifespan:
    """ASGI lifespan protocol, when the app implements it."""

    def __init__(self, app):
        self.app = app
        self.state = {}
        self.queue = asyncio.Queue()
        self.supported = True
        self.startup = loop.create_future()
        self.shutdown = loop.create_future()
        self.task = None

    async def receive(self):
        return await self.queue.get()

    async def send(self, message):
        kind = message.get("type")
        for phase, fut in (("startup", self.startup), ("shutdown", self.shutdown)):
            if kind == "lifespan.%s.complete" % phase and not fut.done():
                fut.set_result(None)
            elif kind == "lifespan.%s.failed" % phase and not fut.done():
                fut.set_exception(RuntimeError(message.get("message") or "lifespan.%s.failed" % phase))

    async def main(self):
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as exc:
            if not self.startup.done():
                # An app without lifespan support raises on the unknown scope type.
                self.supported = False
                self.startup.set_result(None)
            elif not self.shutdown.done():
                self.shutdown.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not self.startup.done():
                self.supported = False
                self.startup.set_result(None)
            if not self.shutdown.done():
                self.shutdown.set_result(None)

    async def start(self):
        self.task = loop.create_task(self.main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.startup  # raises when the app reports lifespan.startup.failed

    async def stop(self, timeout):
        if not self.supported or self.task is None or self.task.done():
            return
        await self.queue.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self.shutdown), timeout)
        except Exception as exc:
            sys.stderr.write("eserveless: ASGI lifespan shutdown: %r\n" % (exc,))


def asgi_handler(app, lifespan):
    from urllib.parse import unquote

    server = ("0.0.0.0", PORT)

    async def handle(exch):
        conn = exch.conn
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": exch.req.http_version.decode("ascii"),
            "method": exch.method,
            "scheme": "http",
            "path": unquote(exch.raw_path.decode("latin-1")),
            "raw_path": exch.raw_path,
            "query_string": exch.query_string,
            "root_path": "",
            "headers": [(bytes(k), bytes(v)) for k, v in exch.req.headers],
            "client": conn.client,
            "server": server if conn.client else (SOCKET, None),
            "extensions": {},
        }
        if lifespan is not None and lifespan.supported:
            scope["state"] = dict(lifespan.state)
        response = {"status": None, "headers": None}
        reading = asyncio.Lock()

        async def receive():
            if not exch.body_done:
                async with reading:  # one reader at a time, even if the app calls receive() from two tasks
                    if not exch.body_done:
                        try:
                            data, more = await exch.read()
                            return {"type": "http.request", "body": data, "more_body": more}
                        except ClientGone:
                            exch.disconnected.set()
            await exch.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            kind = message["type"]
            if kind == "http.response.start":
                if response["status"] is not None:
                    raise RuntimeError("http.response.start sent twice")
                response["status"] = int(message["status"])
                response["headers"] = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            elif kind == "http.response.body":
                if response["status"] is None:
                    raise RuntimeError("http.response.body before http.response.start")
                if exch.finished:
                    raise RuntimeError("http.response.body after the last one")
                if conn.closed:
                    raise ClientGone("client disconnected")
                body = message.get("body", b"")
                more = message.get("more_body", False)
                if not exch.started:
                    headers = response["headers"]
                    if not more and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers):
                        headers.append((b"content-length", b"%d" % len(body)))
                    await exch.start(response["status"], headers)
                await exch.write(body)
                if not more:
                    await exch.end()
            else:
                raise RuntimeError("unsupported ASGI message type %r" % kind)

        try:
            await app(scope, receive, send)
            if not exch.finished:
                raise RuntimeError("the ASGI app returned without completing its response")
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                raise
            await exch.fail(exc)

    return handle


# ---------------------------------------------------------------- main


async def serve(fn, kind):
    global loop
    loop = asyncio.get_running_loop()
    from concurrent.futures import ThreadPoolExecutor

    # WSGI apps and sync functions run here; threads start only when needed.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="eserveless"))
    stop = loop.create_future()

    def on_signal():
        if not stop.done():
            stop.set_result(None)

    # Before the lifespan and the port (a signal may follow at once). As PID 1 a process
    # ignores SIGTERM unless it handles it.
    loop.add_signal_handler(signal.SIGTERM, on_signal)
    loop.add_signal_handler(signal.SIGINT, on_signal)

    lifespan = None
    if kind == "asgi":
        lifespan = Lifespan(fn)
        try:
            await lifespan.start()
        except Exception as exc:
            sys.stderr.write('eserveless: function "%s": ASGI lifespan startup failed: %s\n' % (NAME, exc))
            sys.stderr.flush()
            os._exit(1)
        handler = asgi_handler(fn, lifespan)
    elif kind == "wsgi":
        handler = wsgi_handler(fn)
    else:
        handler = plain_handler(fn)

    state = Server()
    servers = []
    if SOCKET:
        # Bound before the port opens: once the port answers (the gateway's
        # readiness check) the socket does too.
        try:
            if os.path.lexists(SOCKET):
                os.unlink(SOCKET)
            servers.append(await loop.create_unix_server(lambda: Conn(state, handler), SOCKET, backlog=511))
        except OSError as exc:
            sys.stderr.write("eserveless: cannot listen on %s (%s); serving on the port only\n" % (SOCKET, exc.strerror or exc))
    servers.append(await loop.create_server(lambda: Conn(state, handler), "0.0.0.0", PORT, backlog=511, reuse_address=True))
    sys.stdout.write('eserveless: function "%s" (%s) listening on 0.0.0.0:%d\n' % (NAME, kind, PORT))
    sys.stdout.flush()

    await stop

    deadline = loop.time() + STOP_GRACE
    state.stopping = True
    for s in servers:
        s.close()
    for c in list(state.conns):
        if not c.busy:
            c.close()
    while any(c.busy for c in state.conns) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if lifespan is not None:
        await lifespan.stop(max(0.05, deadline + 0.3 - loop.time()))
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: a WSGI thread stuck in the app must not hold the exit.
    os._exit(0)


def main():
    try:
        fn = loader.load_function(NAME)
        kind = loader.http_kind(fn, NAME)
    except loader.LoadError as err:
        err.report()
        sys.exit(1)
    asyncio.run(serve(fn, kind))


if __name__ == "__main__":
    main()

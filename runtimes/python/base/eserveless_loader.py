# eserveless: shared by server.py, cron.py and check.py. Imports the user's
# functions.py from the application directory and tells what kind of callable an
# exported name is. Kept small and free of heavy imports: it runs at every cold start.
import os
import sys

# /app/.eserveless-build/<this file> -> /app
APP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "functions"
FILE = MODULE + ".py"


class LoadError(Exception):
    """A one-line "eserveless: ..." message, plus optional indented detail."""

    def __init__(self, message, detail=""):
        super().__init__(message)
        self.message = message
        self.detail = detail

    def report(self):
        sys.stderr.write(self.message + "\n")
        if self.detail:
            sys.stderr.write("".join("    " + line + "\n" for line in self.detail.rstrip("\n").split("\n")))
        sys.stderr.flush()


def _use_app_dir():
    # sys.path[0] is this directory (.eserveless-build): replace it with the app
    # directory, so that the user's own modules win and never ours (a user's
    # "server.py" or "check.py" must not be shadowed by the wrappers).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if APP_DIR not in sys.path:
        sys.path.insert(0, APP_DIR)


def _where(exc):
    # "file:line" of the innermost frame in the user's code (under APP_DIR, not
    # in the wrappers or the installed dependencies), for load errors.
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename:
        return "%s:%s" % (_rel(exc.filename), exc.lineno)
    best = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = os.path.abspath(frame.filename)
        if path.startswith(APP_DIR + os.sep) and os.sep + ".eserveless-build" + os.sep not in path:
            best = "%s:%s" % (_rel(path), frame.lineno)
    return best or FILE


def _rel(path):
    path = os.path.abspath(path)
    if path.startswith(APP_DIR + os.sep):
        return path[len(APP_DIR) + 1 :]
    return path


def load_module():
    _use_app_dir()
    if not os.path.isfile(os.path.join(APP_DIR, FILE)):
        raise LoadError("eserveless: %s is missing at the root of the repository" % FILE)
    try:
        __import__(MODULE)
    except BaseException as exc:  # a SystemExit or KeyboardInterrupt at load time too
        import traceback

        text = "".join(traceback.format_exception_only(type(exc), exc)).strip().split("\n")[-1]
        # The user's frames only: not the loader's, not importlib's.
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith("<frozen importlib") and os.path.abspath(f.filename) != os.path.abspath(__file__)]
        detail = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(exc), exc))
        if frames:
            detail = "Traceback (most recent call last):\n" + detail
        raise LoadError("eserveless: %s failed to load: %s (%s)" % (FILE, text, _where(exc)), detail)
    return sys.modules[MODULE]


def exports(module):
    """Names functions.py exports: __all__, else its public callables (functions
    and classes it defines itself, and any callable object such as a Flask app)."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return sorted(str(n) for n in names)
    out = []
    for name, value in vars(module).items():
        if name.startswith("_") or not callable(value):
            continue
        if isinstance(value, type) or hasattr(value, "__code__") or type(value).__name__ == "builtin_function_or_method":
            if getattr(value, "__module__", None) != MODULE:
                continue  # imported from elsewhere (from flask import Flask)
        out.append(name)
    return sorted(out)


def load_function(name):
    module = load_module()
    fn = getattr(module, name, None)
    if fn is None:
        raise LoadError(
            'eserveless: function "%s" is not exported by %s (it exports: %s)'
            % (name, FILE, ", ".join(exports(module)) or "nothing")
        )
    if not callable(fn):
        raise LoadError('eserveless: "%s" in %s is not a function (it is a %s)' % (name, FILE, type(fn).__name__))
    return fn


def _positional(fn):
    """(required, maximum) positional parameter counts, maximum None for *args;
    None when the signature cannot be read."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required, maximum = 0, 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            maximum += 1
            if p.default is p.empty:
                required += 1
        elif p.kind == p.VAR_POSITIONAL:
            maximum = None
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            return None  # cannot be called positionally at all
    return required, maximum


def _is_async(fn):
    import inspect

    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)
    if not isinstance(fn, type) and call is not None and inspect.iscoroutinefunction(call):
        return True
    # functools.partial and other wrappers that keep the wrapped function
    wrapped = getattr(fn, "__wrapped__", None) or getattr(fn, "func", None)
    return wrapped is not None and wrapped is not fn and _is_async(wrapped)


def http_kind(fn, name="function"):
    """How server.py calls fn:
    "asgi"  an async callable (coroutine function, or object with an async
            __call__) taking exactly 3 required positional arguments
            (scope, receive, send): FastAPI, Starlette, Quart, Django ASGI;
    "wsgi"  a callable taking exactly 2 required positional arguments
            (environ, start_response): Flask, Django WSGI, Bottle;
    "plain" a callable taking 1 argument (request), or none; may be async.
    Raises LoadError for anything else."""
    counts = _positional(fn)
    if counts is None:
        return "plain"  # a builtin or a C callable: called as fn(request)
    required, maximum = counts
    if required == 3:
        if _is_async(fn):
            return "asgi"
    elif required == 2:
        if not _is_async(fn):
            return "wsgi"
    elif required <= 1:
        return "plain"
    raise LoadError(
        'eserveless: function "%s" cannot serve http: it takes %d required arguments%s; expected '
        "a function(request), a WSGI app (environ, start_response) or an ASGI app "
        "(async: scope, receive, send)"
        % (name, required, " (async)" if _is_async(fn) else "")
    )


def cron_args(fn, envs):
    """Arguments for a cron function: (envs,) unless it takes none."""
    counts = _positional(fn)
    if counts is not None and counts[1] == 0:
        return ()
    return (envs,)


def eserveless_env():
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("ESERVELESS_")}

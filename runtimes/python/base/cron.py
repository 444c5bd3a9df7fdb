# eserveless: cron wrapper. Runs the function functions.py exports under the name
# in argv[1] once, as fn(envs) (or fn() when it takes no argument), where envs is a
# dict of every ESERVELESS_* environment variable; a coroutine function is run with
# asyncio. Exits 0 when it returns; an exception prints its traceback on stderr and
# exits 1.
import os
import sys

import eserveless_loader as loader

NAME = sys.argv[1] if len(sys.argv) > 1 else "Ticker"


def main():
    try:
        fn = loader.load_function(NAME)
    except loader.LoadError as err:
        err.report()
        os._exit(1)
    code = 0
    try:
        result = fn(*loader.cron_args(fn, loader.eserveless_env()))
        if hasattr(result, "__await__"):
            import asyncio

            async def wait():
                return await result

            asyncio.run(wait())
    except SystemExit as exc:
        if exc.code not in (None, 0):
            sys.stderr.write('eserveless: function "%s" exited with %r\n' % (NAME, exc.code))
            code = 1
    except BaseException:
        import traceback

        sys.stderr.write('eserveless: function "%s" failed:\n' % NAME)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Like node's wrapper: threads the function left running do not keep the run alive.
    os._exit(code)


if __name__ == "__main__":
    main()

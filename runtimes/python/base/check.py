# eserveless: build-time check, run once by the Dockerfile for all the functions of a
# deployment: `check.py NAME:KIND ...` (KIND http or cron). Loads functions.py (running
# its top-level code) and exits 1 with one "eserveless: ..." line (plus indented
# details for a load error) when a function cannot be served, so the build fails
# with that message; exits 0 at once otherwise.
import os
import sys

import eserveless_loader as loader


def main(specs):
    try:
        module = loader.load_module()
    except loader.LoadError as err:
        err.report()
        return 1
    missing = []
    problems = []
    for spec in specs:
        name, _, kind = spec.partition(":")
        if not hasattr(module, name):
            missing.append(name)
            continue
        try:
            fn = loader.load_function(name)
            if kind == "http":
                loader.http_kind(fn, name)
        except loader.LoadError as err:
            problems.append(err)
    if missing:
        names = ", ".join('"%s"' % n for n in missing)
        sys.stderr.write(
            "eserveless: function%s %s %s not exported by %s (it exports: %s)\n"
            % ("s" if len(missing) > 1 else "", names, "are" if len(missing) > 1 else "is",
               loader.FILE, ", ".join(loader.exports(module)) or "nothing")
        )
        return 1
    if problems:
        problems[0].report()
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # functions.py may have started threads at load time: do not wait for them.
    os._exit(code)

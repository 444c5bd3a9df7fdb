"""The Python project of `scripts/bench --deploy` (bench/deploy/README.md)."""
import six

# The bench's one-line change rewrites this line (v1 -> v2).
VERSION = "v1"


def API(request):
    return {"runtime": "python", "version": VERSION, "six": six.__version__}


def Ticker(envs):
    print("TICK", VERSION, len(envs))

"""Helpers the bench modes share (scripts/bench --engine swarm, --deploy)."""
import subprocess
import sys


def logger(tag):
    """A log function printing `[bench <tag>] msg` to stderr."""
    def log(msg):
        print(f"[bench {tag}] {msg}", file=sys.stderr, flush=True)
    return log


def run(cmd, check=True, error=RuntimeError, **kw):
    """Runs `cmd`, returns its stdout; a non-zero exit raises `error` with its stderr's end."""
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if check and r.returncode != 0:
        raise error(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout

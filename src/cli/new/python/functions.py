"""The project's eserveless functions: names the manifest lists."""
import datetime
import os


def hello(request):
    """http: returns JSON. Meta values arrive as ESERVELESS_<KEY> variables."""
    who = request.query.get("name", ["world"])[0]
    print(f"hello for {who}")
    return {"message": f"{os.environ.get('ESERVELESS_GREETING', 'Hello')}, {who}!"}


def tick(envs):
    """cron: receives every ESERVELESS_* variable (meta `target` is ESERVELESS_TARGET)."""
    print(f"tick for {envs['ESERVELESS_TARGET']} at {datetime.datetime.now(datetime.timezone.utc).isoformat()}")

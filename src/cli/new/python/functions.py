"""The project's eserveless functions: names the manifest lists."""
import datetime
import os


def hello(request):
    """http: returns JSON. Meta values arrive as ESERVELESS_<KEY> variables."""
    who = request.query.get("name", ["world"])[0]
    print(f"hello for {who}")
    return {"message": f"{os.environ.get('ESERVELESS_GREETING', 'Hello')}, {who}!"}


def tick(envs):
    """cron: receives the function's meta as a dict."""
    print(f"tick for {envs['target']} at {datetime.datetime.now(datetime.timezone.utc).isoformat()}")

"""The hello-world ceiling: a bare Flask app returning a tiny JSON, served by gunicorn with
the API's own settings, so the ratio to it shows what the ledger's work costs per request.

    gunicorn ... 'bench.hello:app'
"""

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.get("/health")
def health() -> ResponseReturnValue:
    # The same path and body as the API's liveness check, which the harness polls.
    return jsonify({"status": "ok"})

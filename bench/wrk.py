"""The wrk client: a plan becomes a Lua script; its `done` hook prints the figures as one
JSON line, so nothing depends on the layout of wrk's own report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.load import LoadResult, Plan, request_timeout_seconds

RESULT_MARKER = "BENCH_RESULT "
# One event-loop thread: the client shares the machine's cores with the servers, and one
# wrk thread already outruns a gunicorn on two cores many times over.
wrk_threads_max = 1
# wrk is asked to stop after the stage's seconds; this bounds a wrk that hangs anyway.
exit_margin_seconds = 60

DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "status": %.0f, "connect": %.0f, '
    .. '"read": %.0f, "write": %.0f, "timeout": %.0f, "p50_us": %.0f, "p99_us": %.0f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

# Every thread numbers itself, so that Idempotency-Keys are unique across threads.
REQUESTS = r"""
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

local counter = 0
function init(args)
  math.randomseed(thread_number * 1000003 + os.time())
end

local function pair()
  if hot then
    return accounts[math.random(#accounts)], hot
  end
  local s = math.random(#accounts)
  local d = math.random(#accounts - 1)
  if d >= s then d = d + 1 end
  return accounts[s], accounts[d]
end

local function item(with_kind)
  local s, d = pair()
  local fields = '"source_account_id": "' .. s .. '", "destination_account_id": "' .. d
    .. '", "amount": 1}'
  if with_kind then
    return '{"kind": "transfer", ' .. fields
  end
  return '{' .. fields
end

function request()
  counter = counter + 1
  local headers = {}
  for k, v in pairs(base_headers) do headers[k] = v end
  headers["Idempotency-Key"] = key_prefix .. thread_number .. "-" .. counter
  local body
  if kind == "transfer" then
    body = item(false)
  else
    local parts = {}
    for i = 1, items_per_request do parts[i] = item(true) end
    body = '{"items": [' .. table.concat(parts, ", ") .. ']}'
  end
  return wrk.format("POST", path, headers, body)
end
"""


def lua_script(plan: Plan) -> str:
    """The plan as wrk Lua: a GET keeps wrk's prebuilt request (no `request` hook)."""
    if plan.kind == "get":
        return DONE
    sources = plan.sources if plan.hot_account_id is not None else plan.account_ids
    headers = {**plan.headers, "Content-Type": "application/json"}
    lines = [
        f"kind = {_lua(plan.kind)}",
        f"path = {_lua(plan.path)}",
        f"key_prefix = {_lua(plan.key_prefix)}",
        f"items_per_request = {plan.items_per_request}",
        f"hot = {_lua(plan.hot_account_id) if plan.hot_account_id else 'nil'}",
        "accounts = {" + ", ".join(_lua(a) for a in sources) + "}",
        "base_headers = {"
        + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in headers.items())
        + "}",
    ]
    return "\n".join(lines) + REQUESTS + DONE


def _lua(text: str) -> str:
    # A JSON string of printable ASCII is also a valid Lua string literal.
    if not text.isascii():
        raise ValueError(f"not ASCII: {text!r}")
    return json.dumps(text)


class WrkClient:
    name = "wrk"

    def __init__(self, wrk_path: str, work_dir: Path) -> None:
        self._wrk = wrk_path
        self._work_dir = work_dir
        self._scripts = 0

    def run(
        self,
        base_url: str,
        plan: Plan,
        *,
        connections: int,
        seconds: float,
        rate_per_second: float | None = None,
    ) -> LoadResult:
        if rate_per_second is not None:
            raise ValueError("wrk cannot hold a rate; use the Python client")
        self._scripts += 1
        script = self._work_dir / f"wrk-{self._scripts}-{plan.kind}.lua"
        script.write_text(lua_script(plan))
        argv = [
            self._wrk,
            "--threads",
            str(min(connections, wrk_threads_max)),
            "--connections",
            str(connections),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--timeout",
            f"{request_timeout_seconds}s",
            "--script",
            str(script),
            f"{base_url}{plan.path}",
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + exit_margin_seconds,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        figures = json.loads(lines[-1][len(RESULT_MARKER) :])
        socket_errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
        return LoadResult(
            # wrk counts answers in `requests`, failed statuses among them; socket
            # errors are requests that got no answer.
            ok=int(figures["requests"] - figures["status"]),
            failed=int(figures["status"] + socket_errors),
            duration_seconds=figures["duration_us"] / 1e6,
            p50_ms=figures["p50_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            client=self.name,
        )

"""`make run`: servers, migrations, a development admin key, then the Procfile under honcho.

Uses DATABASE_URL and REDIS_URL when both are set; otherwise starts (or reuses) the
embedded PostgreSQL and Valkey under .data/. Servers this command started are stopped
when honcho exits (Ctrl-C); servers it found running are left as they were.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from devstack.__main__ import default_data_dir, default_pg_port, default_redis_port
from devstack.servers import find_stack, start_stack
from ledger_core.adapters.database import make_engine
from ledger_core.adapters.sql import SqlUnitOfWorkFactory
from ledger_core.config import Settings
from ledger_core.service_layer.access import Scope, create_api_key

ROOT = Path(__file__).resolve().parent.parent
# The processes `make run` starts: every Procfile process but `release` (done above).
DEV_PROCESSES = ("web", "worker", "webhooks", "housekeeping", "beat", "flower")
honcho_stop_timeout_seconds = 20
flower_user = "admin"
# prometheus_client's multiprocess mode: every process writes its samples here.
metrics_dir = ROOT / default_data_dir / "metrics"


def _fresh_metrics_dir(path: Path) -> Path:
    """Empty the multiprocess metrics dir: files of earlier runs would be counted again."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_file() or entry.is_symlink():
            entry.unlink()
    return path


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    env = dict(os.environ)
    started_here = None
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        data_dir = ROOT / default_data_dir
        already_running = all(find_stack(data_dir))
        stack = start_stack(data_dir, default_pg_port, default_redis_port, durable=True)
        started_here = None if already_running else stack
        env["DATABASE_URL"], env["REDIS_URL"] = stack.database_url, stack.redis_url

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = env["DATABASE_URL"]
    command.upgrade(config, "head")

    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])
    engine = make_engine(settings)
    _, admin_key = create_api_key(SqlUnitOfWorkFactory(engine), name="make run", scope=Scope.ADMIN)
    engine.dispose()

    # Flower shows task arguments and can revoke tasks: a password per session.
    flower_password = secrets.token_urlsafe(16)
    env.update(
        {
            # Listen on loopback only: this is a developer's machine.
            "BIND_HOST": "127.0.0.1",
            "FLOWER_ADDRESS": "127.0.0.1",
            "FLOWER_PORT": str(flower_port),
            "FLOWER_BASIC_AUTH": f"{flower_user}:{flower_password}",
            "PROMETHEUS_MULTIPROC_DIR": str(_fresh_metrics_dir(metrics_dir)),
            "LEDGER_DEVELOPMENT": "1",
            "PYTHONUNBUFFERED": "1",
            # The Procfile names celery and gunicorn: find this virtualenv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    base = f"http://127.0.0.1:{port}"
    print(
        f"\n  API          {base}\n  Docs         {base}/docs\n"
        f"  Admin key    {admin_key}\n"
        f"  Flower       http://127.0.0.1:{flower_port}  "
        f"(user {flower_user}, password {flower_password})\n\n"
        f'  Try: curl -H "Authorization: Bearer {admin_key}" {base}/v1/accounts\n',
        flush=True,
    )
    honcho_path = Path(sys.executable).parent / "honcho"
    # SIGTERM (from a supervisor or `timeout`) ends us like Ctrl-C does: clean up first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    honcho = subprocess.Popen(
        [str(honcho_path), "start", "-f", str(ROOT / "Procfile"), "-p", str(port), *DEV_PROCESSES],
        env=env,
        cwd=ROOT,
    )
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # A second SIGTERM (a supervisor's group kill) must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if honcho.poll() is None:
            honcho.terminate()
            try:
                honcho.wait(honcho_stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                honcho.kill()
        if started_here is not None:
            started_here.stop()


if __name__ == "__main__":
    sys.exit(main())

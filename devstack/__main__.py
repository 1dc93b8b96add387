"""CLI: `python -m devstack up|down|status [--data-dir .data]` for `make run`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from devstack.servers import (
    StackError,
    find_stack,
    postgres_url,
    redis_url,
    start_stack,
    stop_stack,
)

default_data_dir = Path(".data")
# Fixed ports, so URLs in a developer's shell or tools stay valid across restarts.
default_pg_port = 55432
default_redis_port = 56379
# Exit status of `status` when a server is down (LSB: "program is not running").
exit_not_running = 3


def _write_env_file(path: Path, lines: list[str]) -> None:
    """Write a honcho-style .env atomically, so a concurrent reader never sees half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)


def _up(args: argparse.Namespace) -> int:
    # The dev server keeps PostgreSQL's durable defaults: its data outlives restarts.
    stack = start_stack(args.data_dir, args.pg_port, args.redis_port, durable=True)
    lines = [f"DATABASE_URL={stack.database_url}", f"REDIS_URL={stack.redis_url}"]
    _write_env_file(stack.data_dir / "env", lines)
    print("\n".join(lines))
    print(
        f"devstack: postgres PID {stack.pg_pid}, valkey PID {stack.redis_pid}; "
        f"env written to {stack.data_dir / 'env'}",
        file=sys.stderr,
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    if stop_stack(args.data_dir):
        print(f"devstack: stopped servers of {args.data_dir}", file=sys.stderr)
    else:
        print(f"devstack: nothing running for {args.data_dir}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    pg, valkey = find_stack(args.data_dir)
    for name, server, url in (
        ("postgres", pg, postgres_url(pg.port) if pg else ""),
        ("valkey", valkey, redis_url(valkey.port) if valkey else ""),
    ):
        state = f"running  PID {server.pid}  {url}" if server else "stopped"
        print(f"{name:<9}{state}")
    return 0 if pg and valkey else exit_not_running


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Run an embedded PostgreSQL and Valkey on 127.0.0.1 for development.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--data-dir", type=Path, default=default_data_dir, help="default: %(default)s"
        )
        return command

    up = add("up", "start (or reuse) both servers and write DATA_DIR/env")
    up.add_argument("--pg-port", type=int, default=default_pg_port, help="default: %(default)s")
    up.add_argument(
        "--redis-port", type=int, default=default_redis_port, help="default: %(default)s"
    )
    up.set_defaults(handler=_up)
    add("down", "stop both servers").set_defaults(handler=_down)
    add("status", f"show both servers; exit {exit_not_running} if one is down").set_defaults(
        handler=_status
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    logging.basicConfig(level=logging.WARNING, format="devstack: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except StackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Embedded PostgreSQL and Valkey for development and tests: no Docker, no system services.

    from devstack import start_stack, create_database
    stack = start_stack(tmp_path, durable=False)
    url = create_database(stack.database_url, "test_x")
    ...
    stack.stop()

The CLI (`python -m devstack up|down|status`) serves `make run`.
"""

from devstack.servers import (
    Server,
    Stack,
    StackError,
    create_database,
    find_stack,
    postgres_url,
    redis_url,
    start_stack,
    stop_stack,
)

__all__ = [
    "Server",
    "Stack",
    "StackError",
    "create_database",
    "find_stack",
    "postgres_url",
    "redis_url",
    "start_stack",
    "stop_stack",
]

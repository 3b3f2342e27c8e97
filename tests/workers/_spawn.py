"""Runs a script of tests/workers/ in a process forked by multiprocessing's forkserver
(tests/helpers.py, Workers.spawn). The server imported hotmesh and psycopg once, so a worker
process costs a fork instead of a new interpreter and 0.3 s of imports: the crash matrix alone
starts about 70 of them. Only the standard library here: the server imports this module too."""

from __future__ import annotations

import os
import runpy
import sys


def run(script: str, argv: list[str], env: dict[str, str], log: str) -> None:
    """What `python script *argv` would do with environment `env` and stdout and stderr
    appended to `log`."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")

"""Runs Python code in a process forked by multiprocessing's forkserver (tests/helpers.py,
`python`). The server imported hotmesh and psycopg once, so a worker process or a `hotmesh`
command costs a fork instead of a new interpreter and 0.3 s of imports: the crash matrix
alone starts about 70 workers. Only the standard library here: the server imports this module
too."""

from __future__ import annotations

import os
import runpy
import sys


def _redirect(fd: int, path: str) -> None:
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(opened, fd)
    os.close(opened)


def run(argv: list[str], env: dict[str, str], stdout: str, stderr: str, cwd: str | None) -> None:
    """What `python *argv` (a script and its arguments, or `-m module ...`) would do in `cwd`
    with environment `env`, stdout and stderr appended to the files named."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    _redirect(1, stdout)
    _redirect(2, stderr)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")

"""The dashboard mounted at /hm in an application of its own (tests/test_ui.py), with a list
window of 25 workflows.

python tests/workers/ui_mounted.py DSN APP PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from hotmesh.ui import create_app

if __name__ == "__main__":
    dsn, app, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    inner = create_app(app, dsn, allow_actions=True, list_window=25)
    uvicorn.run(Starlette(routes=[Mount("/hm", inner)]), port=port, log_level="warning")

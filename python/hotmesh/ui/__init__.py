"""`hotmesh ui`: a web dashboard for an app's workflows, their entities and queues
(docs/ui.md). Needs the optional extra: `pip install hotmesh[ui]`; the engine imports
nothing of it.

    from hotmesh.ui import create_app
    app = create_app("my_app", allow_actions=True)  # an ASGI application
"""

from hotmesh.ui._app import create_app

__all__ = ["create_app"]

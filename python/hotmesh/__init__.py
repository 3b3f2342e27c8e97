"""hotmesh: durable workflows with permanent memory, native to PostgreSQL.

    mf = await MemFlow.init(app_id="my_app")            # installs schema my_app
    await mf.worker.create(task_queue="q", workflow=example)
    handle = await mf.workflow.start(workflow_name="example", args=["Jane"], task_queue="q")
    print(await handle.result())

Inside workflow functions use `hotmesh.workflow` (proxy_activities, sleep_for, ...);
inside activities `hotmesh.activity` (info, heartbeat). Inspection (`mf.workflow.list`,
`handle.history`, `mf.queue_backlog`) returns the frozen dataclasses of `hotmesh.rows`.
"""

from hotmesh import activity, workflow
from hotmesh.client import Handle, MemFlow
from hotmesh.entity import Entity
from hotmesh.errors import (
    CancelledFailure,
    DuplicateJobError,
    EntityPathError,
    EntityTypeError,
    FatalError,
    HotMeshError,
    IllegalTransition,
    InvalidArgument,
    LeaseLost,
    MaxedError,
    NonDeterminismError,
    TaskNotFound,
    TimeoutFailure,
    WorkflowError,
    WorkflowNotFound,
)
from hotmesh.retry import RetryPolicy
from hotmesh.rows import HistoryEntry, QueueBacklog, QueueLimits, WorkflowSummary
from hotmesh.worker import Worker

__all__ = [
    "CancelledFailure",
    "DuplicateJobError",
    "Entity",
    "EntityPathError",
    "EntityTypeError",
    "FatalError",
    "Handle",
    "HistoryEntry",
    "HotMeshError",
    "IllegalTransition",
    "InvalidArgument",
    "LeaseLost",
    "MaxedError",
    "MemFlow",
    "NonDeterminismError",
    "QueueBacklog",
    "QueueLimits",
    "RetryPolicy",
    "TaskNotFound",
    "TimeoutFailure",
    "Worker",
    "WorkflowError",
    "WorkflowNotFound",
    "WorkflowSummary",
    "activity",
    "workflow",
]

"""Prometheus metrics (`pip install hotmesh[metrics]`; docs/metrics.md).

Two sources, two kinds of series:

- each worker process counts what it does (`WorkerMetrics`): tasks claimed, completed,
  failed, retried; activation and activity durations; schedule-to-start latency; in-flight
  tasks; lease losses; reconnects. `hotmesh worker --metrics-port 9464` serves them on /metrics.
- the database knows what no single worker does (`<app>.metrics`, a view): the backlog per
  queue and kind, the age of the oldest ready task, the tasks running, the workflows waiting.
  `hotmesh metrics` prints them as Prometheus text, `hotmesh metrics --port 9465` serves them:
  one scrape target per database, however many workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hotmesh import errors

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from hotmesh.rows import MetricSample

# Durations from 1 ms to 5 minutes.
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise errors.HotMeshError(
            "metrics need prometheus-client: pip install 'hotmesh[metrics]'"
        ) from None
    return prometheus_client


class WorkerMetrics:
    """The series a worker process exports. One per process (its registry: the default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prom = _prometheus()
        registry = registry if registry is not None else prom.REGISTRY
        self.registry = registry
        labels = ["queue", "kind"]
        self.claimed = prom.Counter(
            "hotmesh_tasks_claimed", "Tasks this worker claimed", labels, registry=registry
        )
        self.completed = prom.Counter(
            "hotmesh_tasks_completed",
            "Tasks this worker ran to their end (an activation that completed, suspended or "
            "continued its workflow; an activity that returned)",
            labels,
            registry=registry,
        )
        self.failed = prom.Counter(
            "hotmesh_tasks_failed",
            "Tasks that failed for good (no attempt left, or not retryable)",
            labels,
            registry=registry,
        )
        self.retried = prom.Counter(
            "hotmesh_tasks_retried",
            "Tasks that failed and are due again (their retry policy)",
            labels,
            registry=registry,
        )
        self.activation_seconds = prom.Histogram(
            "hotmesh_activation_duration_seconds",
            "Time to run one activation of a workflow thread (replay and new steps)",
            ["queue", "workflow"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.activity_seconds = prom.Histogram(
            "hotmesh_activity_duration_seconds",
            "Time to run one attempt of an activity (inline or claimed)",
            ["queue", "activity"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.schedule_to_start = prom.Histogram(
            "hotmesh_schedule_to_start_seconds",
            "How long each task this worker claimed had been due before the claim "
            "(the engine's clock)",
            labels,
            buckets=(*_BUCKETS, 900, 3600),  # a backlog may last longer than a run
            registry=registry,
        )
        self.in_flight = prom.Gauge(
            "hotmesh_tasks_in_flight", "Tasks this worker runs now", ["queue"], registry=registry
        )
        self.lease_losses = prom.Counter(
            "hotmesh_lease_losses",
            "Tasks whose lease this worker lost while running them (another worker takes over)",
            ["queue"],
            registry=registry,
        )
        self.reconnects = prom.Counter(
            "hotmesh_reconnects",
            "Times the claim loop got the database back after failures",
            ["queue"],
            registry=registry,
        )

    @classmethod
    def default(cls) -> WorkerMetrics:
        """The process's metrics, on prometheus_client's default registry (made once)."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls()
        return _DEFAULT

    def watch_in_flight(self, queue: str, count: Callable[[], int]) -> None:
        self.in_flight.labels(queue).set_function(count)

    def failure(self, queue: str, kind: str, retrying: bool) -> None:
        (self.retried if retrying else self.failed).labels(queue, kind).inc()


_DEFAULT: WorkerMetrics | None = None


def serve(metrics: WorkerMetrics, port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104
    """Serve `metrics` on http://host:port/metrics (a thread); a clear error when the port is
    taken. Returns the server (`.shutdown()` stops it)."""
    prom = _prometheus()
    try:
        server, _thread = prom.start_http_server(port, host, registry=metrics.registry)
    except OSError as error:
        raise errors.HotMeshError(
            f"cannot serve metrics on {host}:{port}: {error.strerror or error} "
            f"(is another process using the port? choose another with --metrics-port)"
        ) from None
    return server


_HELP = {
    "hotmesh_tasks_ready": "Tasks due now and not yet claimed (the backlog)",
    "hotmesh_tasks_delayed": "Tasks due later (timers, retries, delayed starts)",
    "hotmesh_tasks_running": "Tasks leased by a worker now",
    "hotmesh_tasks_lease_expired": "Leased tasks whose lease ran out (their worker is gone)",
    "hotmesh_tasks_dead": "Tasks parked as dead (they need a person: retry_workflow)",
    "hotmesh_oldest_ready_task_seconds": "How long the oldest ready task has waited (0: none)",
    "hotmesh_workflows": "Unfinished workflows by status (pending, running, waiting)",
}


def _label(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: Iterable[MetricSample]) -> str:
    """Rows of the `<app>.metrics` view as Prometheus text (exposition format 0.0.4)."""
    by_name: dict[str, list[MetricSample]] = {}
    for sample in samples:
        by_name.setdefault(sample.metric, []).append(sample)
    lines: list[str] = []
    for name in sorted(set(by_name) | set(_HELP)):
        lines.append(f"# HELP {name} {_HELP.get(name, name)}")
        lines.append(f"# TYPE {name} gauge")
        for sample in by_name.get(name, []):
            labels = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(sample.labels.items()))
            value = sample.value
            shown = "NaN" if math.isnan(value) else repr(float(value))
            lines.append(f"{name}{{{labels}}} {shown}" if labels else f"{name} {shown}")
    return "\n".join(lines) + "\n"

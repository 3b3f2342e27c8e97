"""Retry policy: how often a failing activity or workflow runs, and how long it waits between."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotmesh._durations import Duration, seconds


@dataclass(frozen=True)
class RetryPolicy:
    """`maximum_attempts` counts every run, the first included. The delay before run n+1 is
    min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval), computed in SQL
    (`retry_delay`). A field left None takes the default, which SQL owns (`_retry_policy`:
    the seed's effective ones, 3 runs, 1 s, x10, 120 s cap).
    Errors whose type name is in `non_retryable_errors` (and `FatalError`) are not retried.
    """

    maximum_attempts: int | None = None
    initial_interval: Duration | None = None
    backoff_coefficient: float | None = None
    maximum_interval: Duration | None = None
    non_retryable_errors: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The JSON form the SQL functions take (only the fields set); SQL checks the values
        and fills in the rest."""
        result: dict[str, Any] = {"non_retryable_errors": list(self.non_retryable_errors)}
        if self.maximum_attempts is not None:
            result["maximum_attempts"] = self.maximum_attempts
        if self.initial_interval is not None:
            result["initial_interval"] = seconds(self.initial_interval, "initial_interval")
        if self.backoff_coefficient is not None:
            result["backoff_coefficient"] = self.backoff_coefficient
        if self.maximum_interval is not None:
            result["maximum_interval"] = seconds(self.maximum_interval, "maximum_interval")
        return result


# An activity's timeouts (docs/timeouts.md): they ride with its retry policy to the database,
# which enforces them.
TIMEOUTS = ("start_to_close", "schedule_to_close", "heartbeat_timeout")


def has_timeouts(policy: dict[str, Any] | None) -> bool:
    """Whether an activity call's policy carries a timeout (then it never runs inline: the
    database enforces timeouts on queued tasks)."""
    return policy is not None and any(policy.get(k) is not None for k in TIMEOUTS)


def policy_json(policy: RetryPolicy | dict[str, Any] | None) -> dict[str, Any] | None:
    """Accept a RetryPolicy or the seed-style dict (camelCase keys welcome)."""
    if policy is None or isinstance(policy, RetryPolicy):
        return None if policy is None else policy.to_json()
    aliases = {
        "maximumAttempts": "maximum_attempts",
        "initialInterval": "initial_interval",
        "backoffCoefficient": "backoff_coefficient",
        "maximumInterval": "maximum_interval",
        "nonRetryableErrors": "non_retryable_errors",
        "startToCloseTimeout": "start_to_close",
        "scheduleToCloseTimeout": "schedule_to_close",
        "heartbeatTimeout": "heartbeat_timeout",
    }
    result: dict[str, Any] = {}
    for key, value in policy.items():
        name = aliases.get(key, key)
        if name in ("initial_interval", "maximum_interval", *TIMEOUTS):
            value = seconds(value, name)
        result[name] = value
    return result

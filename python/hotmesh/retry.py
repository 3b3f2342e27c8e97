"""Retry policy: how often a failing activity or workflow runs, and how long it waits between."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotmesh._durations import Duration, seconds


@dataclass(frozen=True)
class RetryPolicy:
    """`maximum_attempts` counts every run, the first included. The delay before run n+1 is
    min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval), computed in SQL
    (`retry_delay`). Defaults are the seed's effective ones: 3 runs, 1 s, x10, 120 s cap.
    Errors whose type name is in `non_retryable_errors` (and `FatalError`) are not retried.
    """

    maximum_attempts: int = 3
    initial_interval: Duration = 1.0
    backoff_coefficient: float = 10.0
    maximum_interval: Duration = 120.0
    non_retryable_errors: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The JSON form the SQL functions take; SQL checks the values."""
        return {
            "maximum_attempts": self.maximum_attempts,
            "initial_interval": seconds(self.initial_interval, "initial_interval"),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": seconds(self.maximum_interval, "maximum_interval"),
            "non_retryable_errors": list(self.non_retryable_errors),
        }


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
    }
    result: dict[str, Any] = {}
    for key, value in policy.items():
        name = aliases.get(key, key)
        if name in ("initial_interval", "maximum_interval"):
            value = seconds(value, name)
        result[name] = value
    return result

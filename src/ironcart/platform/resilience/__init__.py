"""Resilience for outbound calls: deadlines, circuit breakers, bulkheads, retries with a budget.

`policy_for(name, settings.resilience)` gives the process's policy for one dependency;
every outbound call runs through `Policy.call`. See docs/resilience.md.
"""

from ironcart.platform.resilience.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
)
from ironcart.platform.resilience.budget import RetryBudget
from ironcart.platform.resilience.bulkhead import Bulkhead
from ironcart.platform.resilience.deadline import (
    DEADLINE_HEADER,
    DeadlineMiddleware,
    deadline_scope,
    outbound_deadline_headers,
    remaining_seconds,
)
from ironcart.platform.resilience.policy import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    DependencyUnavailable,
    Policy,
    PolicyConfig,
    Transient,
    config_from,
    policy_for,
    register,
    registered_policies,
)

__all__ = [
    "DEADLINE_HEADER",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpen",
    "DeadlineExceeded",
    "DeadlineMiddleware",
    "DependencyUnavailable",
    "Policy",
    "PolicyConfig",
    "RetryBudget",
    "Transient",
    "config_from",
    "deadline_scope",
    "outbound_deadline_headers",
    "policy_for",
    "register",
    "registered_policies",
    "remaining_seconds",
]

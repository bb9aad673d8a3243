"""When a model cannot start an instance, a request for it is answered 503 at once, with the reason
and `Retry-After`, rather than queued until `max_wait_s` runs out. Pure: the fleet gathers the facts."""

from __future__ import annotations

from dataclasses import dataclass

FAILED_STARTS = 3  # this many failed starts within the failure window, and nothing serving: give up early
RETRY_DISABLED_S = 300  # an admin must act first
RETRY_BROKEN_S = 60  # the policy keeps trying to start it; a minute is a fair wait


@dataclass(frozen=True, slots=True)
class Unavailable:
    code: str  # "model_disabled" | "launch_refused" | "start_failing"
    message: str
    retry_after_s: int


def why_unavailable(
    model: str, max_instances: int, ready: int, refusal: str | None, recent_failures: int
) -> Unavailable | None:
    """Why `model` cannot serve a request soon, or None. `ready`: its instances that serve now;
    `refusal`: the backend's message when it refused the model's last launch (None once a launch
    is taken); `recent_failures`: its starts that failed within the failure window (one more try
    may be under way: after that many, it is not worth a client's wait)."""
    if max_instances <= 0:
        return Unavailable("model_disabled", f"model {model!r} is disabled (max_instances = 0)", RETRY_DISABLED_S)
    if ready:
        return None
    if refusal is not None:
        return Unavailable("launch_refused", f"the cluster refuses to start model {model!r}: {refusal}",
                           RETRY_BROKEN_S)
    if recent_failures >= FAILED_STARTS:
        return Unavailable("start_failing", f"model {model!r} failed to start {recent_failures} times in the "
                           "last 10 minutes; its instances' logs say why", RETRY_BROKEN_S)
    return None

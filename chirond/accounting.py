"""Per-request accounting on the daemon's request path: quotas before a request queues, then at
its end the metrics, the user's usage, the SLO verdict and the observations the policy reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from chirond.config import Config
from chirond.control.instance import Instance
from chirond.control.loop import ControlLoop
from chirond.control.observations import slo_met
from chirond.dispatch import Dispatcher
from chirond.metrics import Metrics
from chirond.model import ReqClass, Request
from chirond.serve import openai_api as oa
from chirond.serve.gateway import Job
from chirond.users import InFlight, UserStore, gpu_seconds


class Accounting:
    def __init__(
        self,
        cfg: Config,
        users: UserStore,
        metrics: Metrics,
        control: ControlLoop,
        dispatcher: Dispatcher,
        clock: Callable[[], float],
        on_interactive: Callable[[Request], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # each interactive request that reached the queues, however it ended (the traffic history)
        self.on_interactive = on_interactive
        self.users = users
        self.metrics = metrics
        self.control = control
        self.dispatcher = dispatcher
        self.clock = clock
        self.user_inflight = InFlight()  # interactive requests per user, for the quota
        # Tokens each user's admitted, unfinished requests may still spend (input + output cap), so
        # that many requests admitted at once cannot overrun tokens_per_day before any finishes.
        self.reserved: dict[str, int] = {}

    @property
    def instances(self) -> Mapping[int, Instance]:
        return self.control.instances

    def admit(self, user: str, parsed: oa.ParsedRequest, cls: ReqClass) -> None:
        """Per-user quotas, before a request is queued: 429 with the reason."""
        refusal = self.users.check_tokens(user, self.reserved.get(user, 0))
        retry = self.users.seconds_to_reset() if refusal else self.cfg.api.retry_after_s
        if refusal is None and cls is ReqClass.INTERACTIVE:
            refusal = self.users.check_interactive(user, self.user_inflight[user])
        if refusal is not None:
            self.metrics.requests.labels(parsed.model, cls.value, "over_quota").inc()
            raise oa.ApiError(429, refusal, code="quota_exceeded", headers={"Retry-After": str(retry)})

    def on_arrival(self, job: Job) -> None:
        r = job.req
        self.control.obs.arrival(r)
        user = str(job.extra["user"])
        if r.cls is ReqClass.INTERACTIVE:
            self.user_inflight.inc(user)
        hold = r.input_tokens + r.output_tokens  # output_tokens: the cap until it ends
        job.extra["reserved"] = hold
        self.reserved[user] = self.reserved.get(user, 0) + hold

    def on_first_token(self, job: Job) -> None:
        r = job.req
        if r.first_token is not None:
            self.metrics.ttft.labels(r.model, r.cls.value).observe(r.first_token - r.arrival)

    def on_finished(self, job: Job, outcome: str) -> None:
        r = job.req
        user = str(job.extra["user"])
        now = self.clock()
        if r.cls is ReqClass.INTERACTIVE:
            self.user_inflight.dec(user)
            if self.on_interactive is not None:
                self.on_interactive(r)
        hold = job.extra.pop("reserved", 0)
        left = self.reserved.get(user, 0) - (hold if isinstance(hold, int) else 0)
        if left > 0:
            self.reserved[user] = left
        else:
            self.reserved.pop(user, None)
        self.metrics.requests.labels(r.model, r.cls.value, outcome).inc()
        if r.dispatched is not None:  # it reached an instance: its tokens and GPU time count
            slot = self.dispatcher.slots.get(r.instance) if r.instance is not None else None
            gpus = self.cfg.models[r.model].profile.gpus
            spent = gpu_seconds(gpus, now - r.dispatched, 1 + (slot.inflight if slot else 0))
            self.users.add_usage(user, r.model, r.input_tokens, r.output_tokens if r.finish else 0, spent)
        if r.instance is not None:
            self.control.request_left(r.instance, now)
        if outcome != "ok":
            if outcome == "error":
                self.metrics.finished(r.model, r.cls.value, False)
            return
        if r.finish is not None:
            self.metrics.e2e.labels(r.model, r.cls.value).observe(r.finish - r.arrival)
        if r.cls is ReqClass.INTERACTIVE:
            self.metrics.tpot.labels(r.model, r.cls.value).observe(r.tpot or 0.0)
        self.control.obs.completed(r, self.instances.get(r.instance) if r.instance is not None else None)
        self.metrics.finished(r.model, r.cls.value, slo_met(r, self.cfg.models[r.model].slo))

"""Live state of the data plane: deployments, their instances, admission and the current config.

Everything here runs on the router's one event loop and is changed only between awaits, so no
lock is needed: `Runtime.apply` swaps a whole new configuration in one synchronous step.

Reconfiguration without loss. A request keeps the `Deployment` and `Instance` objects it was
given, so it finishes where it started whatever the new config says. Objects are carried
over by name (deployments) and by address (instances), with their in-flight counts and their
keep-alive connections, so limits stay exact across a change and a traffic shift opens no
new connection. An instance that leaves the config is *retired*: it gets no new request and
its connections are closed once its last request is answered.

Admission (Azure ML's rule). A deployment admits at most
`2 x max_concurrent_requests_per_instance x instances` requests at once (divided evenly
between worker processes when there are several: each admits its share, rounded up). A
request over the limit waits, first come first served, up to `max_queue_wait_ms` for a slot;
then it is refused (429). A freed slot goes straight to the oldest waiter.

Instances. Inside a deployment the least busy instance (fewest requests in flight from this
router) serves; ties rotate. An instance that cannot be reached is marked down for
`DOWN_FOR_S` and skipped meanwhile (unless every instance is down), so an instance that
died costs one failed connect per second instead of one per request.

Readiness. A deployment with a readiness probe (a custom container's readiness_route) serves
from its *ready* instances only: `members` are the instances the config lists, `instances`
those of them whose readiness holds (probes.py decides, from the router's own checks). An
instance is ready when it joins (the reconciler routes an instance only once it answered
its readiness route) and leaves after failure_threshold failed checks in a row, to come
back after success_threshold good ones; with none ready, the deployment answers 503.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from reconciler.router.balancing import WeightedChoice, least_busy
from reconciler.router.config import DeploymentRoute, RouterConfig
from reconciler.router.upstream import UpstreamPool

DOWN_FOR_S = 1.0


class Instance:
    """One backend address of one deployment, with its connection pool and probe record."""

    __slots__ = (
        "address",
        "busy",
        "down_until",
        "host",
        "host_header",
        "liveness_failures",
        "pool",
        "probing",
        "readiness_failures",
        "readiness_successes",
        "ready",
        "retired",
    )

    def __init__(self, address: str, *, connect_timeout: float) -> None:
        self.address = address
        self.host = address.rpartition(":")[0].strip("[]")
        self.host_header = address.encode("ascii")
        self.pool = UpstreamPool(address, connect_timeout=connect_timeout)
        self.busy = 0
        self.down_until = 0.0
        self.retired = False
        # Probe record (probes.py): consecutive results, and which checks are under way.
        self.ready = True
        self.readiness_failures = 0
        self.readiness_successes = 0
        self.liveness_failures = 0
        self.probing: set[str] = set()

    def retire(self) -> None:
        self.retired = True
        if self.busy == 0:
            self.pool.close()

    def finished(self) -> None:
        self.busy -= 1
        if self.retired and self.busy == 0:
            self.pool.close()


class Deployment:
    """A deployment's instances and its admission control."""

    __slots__ = (
        "_rotation",
        "_waiters",
        "in_flight",
        "instances",
        "limit",
        "members",
        "name",
        "route",
        "scoring_path",
        "swagger_path",
        "timeout_s",
    )

    def __init__(self, route: DeploymentRoute, *, workers: int, connect_timeout: float) -> None:
        self.name = route.name
        self.members: tuple[Instance, ...] = ()  # every instance of the config
        self.instances: tuple[Instance, ...] = ()  # those that serve: the ready members
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._rotation = 0
        self.update(route, workers=workers, connect_timeout=connect_timeout)

    def update(self, route: DeploymentRoute, *, workers: int, connect_timeout: float) -> None:
        """Take new settings and instances; keep the instances whose address stays."""
        self.route = route
        self.timeout_s = route.request_timeout_ms / 1000.0
        self.scoring_path = route.scoring_path.encode("ascii")
        self.swagger_path = route.swagger_path.encode("ascii")
        self.limit = math.ceil(route.max_in_flight / workers)
        kept = {instance.address: instance for instance in self.members}
        instances = []
        for address in route.instances:
            instance = kept.pop(address, None)
            if instance is None:
                instance = Instance(address, connect_timeout=connect_timeout)
            else:
                instance.pool.connect_timeout = connect_timeout
            if route.readiness_probe is None:
                # Nothing decides otherwise: every instance of the config serves.
                instance.ready = True
            instances.append(instance)
        for gone in kept.values():
            gone.retire()
        self.members = tuple(instances)
        self.refresh()

    def refresh(self) -> None:
        """Serve from the ready members (after a config change or a readiness change)."""
        self.instances = tuple(i for i in self.members if i.ready)
        self._wake_waiters()

    def retire(self) -> None:
        for instance in self.members:
            instance.retire()
        self.members = ()
        self.instances = ()
        self.limit = 0

    # admission
    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def try_admit(self) -> bool:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def admit(self, wait_s: float) -> bool:
        """Take a slot, waiting up to `wait_s` behind earlier waiters; False when none came."""
        if self.try_admit():
            return True
        if wait_s <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
        # Not cancelled: release() handed its slot over, in_flight already counts this request.
        return not waiter.cancelled()

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue  # gave up waiting
            if self.in_flight > self.limit:
                # The limit shrank (fewer instances): drain to it before handing slots on.
                self._waiters.appendleft(waiter)
                break
            waiter.set_result(None)  # the slot passes on; in_flight is unchanged
            return
        self.in_flight -= 1

    def _wake_waiters(self) -> None:
        # The limit may have grown (more instances): admit waiters up to the new limit.
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    # instances
    def pick_instance(self, tried: tuple[Instance, ...], now: float) -> Instance | None:
        """The least busy instance not tried yet by this request; None when all were tried."""
        if not tried and len(self.instances) == 1:
            # The common case, without the lists below: one instance is the least busy one
            # (down or not: with every instance down, all are considered again).
            return self.instances[0]
        candidates = [i for i in self.instances if i not in tried] if tried else self.instances
        if not candidates:
            return None
        self._rotation += 1
        index = least_busy(
            [i.busy for i in candidates],
            [i.down_until <= now for i in candidates],
            self._rotation % len(candidates),
        )
        return None if index is None else candidates[index]

    @property
    def busy_instances(self) -> int:
        return sum(1 for instance in self.instances if instance.busy)

    @property
    def capacity(self) -> int:
        """In-flight requests that make utilisation 1.0: instances x max concurrent."""
        return len(self.instances) * self.route.max_concurrent_requests_per_instance


class Runtime:
    """The current configuration and the live objects built from it."""

    def __init__(self, config: RouterConfig, *, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self.deployments: dict[str, Deployment] = {}
        self.config = config
        self.chooser = WeightedChoice(())
        self.mirror: tuple[Deployment, int] | None = None
        self.apply(config)

    def apply(self, config: RouterConfig) -> None:
        """Swap in `config`; requests in flight keep the objects they already hold."""
        connect_timeout = config.connect_timeout_ms / 1000.0
        previous = self.deployments
        current: dict[str, Deployment] = {}
        for route in config.deployments:
            deployment = previous.pop(route.name, None)
            if deployment is None:
                deployment = Deployment(
                    route, workers=self.workers, connect_timeout=connect_timeout
                )
            else:
                deployment.update(route, workers=self.workers, connect_timeout=connect_timeout)
            current[route.name] = deployment
        for gone in previous.values():
            gone.retire()
        self.deployments = current
        self.chooser = WeightedChoice(config.traffic)
        self.mirror = None
        for name, percent in config.mirror_traffic:
            self.mirror = (current[name], percent)
        self.config = config

    def close(self) -> None:
        for deployment in self.deployments.values():
            deployment.retire()

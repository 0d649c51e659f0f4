"""The router's own checks of instances: a custom container's readiness and liveness routes.

Azure ML asks a custom container's `readiness_route` to decide whether an instance gets
traffic and its `liveness_route` to decide whether it is restarted, each with the
deployment's probe settings (period, timeout, success and failure thresholds). The router
is where traffic is decided and it can reach every instance, so it runs both checks:

- readiness: failure_threshold failed checks in a row take an instance out of its
  deployment's rotation (`Deployment.refresh`); success_threshold good ones bring it back.
  A check is GET `path` on the instance's host at the probe's `port`; an answer 200-399
  within `timeout` seconds is a success (Kubernetes' rule), anything else a failure.
- liveness: the router only counts failed checks in a row (`liveness_failures`); it cannot
  restart a container. The reconciler reads the counts (`GET /-/instances`, admin secret)
  and restarts an instance whose count reached failure_threshold.

Each worker process checks on its own (a check is one small request per period). Checks
run as tasks of the worker's event loop, never on the scoring path; at most one check of
each kind per instance is under way at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.router.config import Probe
from reconciler.router.runtime import Deployment, Instance, Runtime

READINESS = "readiness"
LIVENESS = "liveness"
IDLE_S = 1.0  # the longest sleep between looks at the config's deployments
MIN_WAIT_S = 0.05
_MAX_HEAD = 8192


async def check(host: str, port: int, path: str, timeout: float) -> bool:
    """One check: GET path on host:port answered 200-399 within timeout seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            host_header = f"[{host}]" if ":" in host else host
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\n"
                "User-Agent: reconciler-router-probe\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            line = await reader.readuntil(b"\r\n")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    return 200 <= int(parts[1]) < 400


Checker = Callable[[str, int, str, float], Awaitable[bool]]


class Prober:
    """Runs the due checks of every instance of every deployment that has probes."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        log: Any,
        clock: Callable[[], float],
        checker: Checker = check,
    ) -> None:
        self.runtime = runtime
        self.log = log
        self._clock = clock
        self._check = checker
        # When each (kind, deployment, address) is next due; entries of instances that left
        # the config are dropped as they are seen to be gone.
        self._due: dict[tuple[str, str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = self.tick()
            # Asleep until the next check is due; at least once a second, to meet instances
            # a new config brought (their first check is a period away anyway).
            wait = IDLE_S if due is None else min(max(due - self._clock(), MIN_WAIT_S), IDLE_S)
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def tick(self) -> float | None:
        """Start every check that is due and not already under way; when the next is due."""
        now = self._clock()
        seen: set[tuple[str, str, str]] = set()
        for deployment in self.runtime.deployments.values():
            route = deployment.route
            for kind, probe in (
                (READINESS, route.readiness_probe),
                (LIVENESS, route.liveness_probe),
            ):
                if probe is None:
                    continue
                for instance in deployment.members:
                    key = (kind, deployment.name, instance.address)
                    seen.add(key)
                    # The first check of an instance one period after the router met it: the
                    # reconciler checked its readiness just before routing it.
                    due = self._due.setdefault(key, now + probe.period)
                    if now < due or kind in instance.probing:
                        continue
                    self._due[key] = now + probe.period
                    instance.probing.add(kind)
                    task = asyncio.get_running_loop().create_task(
                        self._one(kind, deployment, instance, probe)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        for gone in set(self._due) - seen:
            del self._due[gone]
        return min(self._due.values(), default=None)

    async def _one(
        self, kind: str, deployment: Deployment, instance: Instance, probe: Probe
    ) -> None:
        try:
            ok = await self._check(instance.host, probe.port, probe.path, probe.timeout)
        finally:
            instance.probing.discard(kind)
        if instance.retired:
            return
        if kind == READINESS:
            self._readiness(deployment, instance, probe, ok)
        else:
            self._liveness(deployment, instance, probe, ok)

    def _readiness(
        self, deployment: Deployment, instance: Instance, probe: Probe, ok: bool
    ) -> None:
        if ok:
            instance.readiness_failures = 0
            instance.readiness_successes += 1
            if not instance.ready and instance.readiness_successes >= probe.success_threshold:
                instance.ready = True
                deployment.refresh()
                self.log.info(
                    "instance.ready", deployment=deployment.name, instance=instance.address
                )
            return
        instance.readiness_successes = 0
        instance.readiness_failures += 1
        if instance.ready and instance.readiness_failures >= probe.failure_threshold:
            instance.ready = False
            deployment.refresh()
            self.log.warning(
                "instance.unready",
                deployment=deployment.name,
                instance=instance.address,
                failures=instance.readiness_failures,
                route=f":{probe.port}{probe.path}",
            )

    def _liveness(self, deployment: Deployment, instance: Instance, probe: Probe, ok: bool) -> None:
        if ok:
            instance.liveness_failures = 0
            return
        instance.liveness_failures += 1
        if instance.liveness_failures == probe.failure_threshold:
            self.log.warning(
                "instance.liveness_failed",
                deployment=deployment.name,
                instance=instance.address,
                failures=instance.liveness_failures,
                route=f":{probe.port}{probe.path}",
            )


def health_view(runtime: Runtime) -> dict[str, Any]:
    """What the admin call `GET /-/instances` answers: each instance's probe record."""
    deployments: dict[str, Any] = {}
    for name, deployment in sorted(runtime.deployments.items()):
        route = deployment.route
        deployments[name] = {
            "readiness_probe": route.readiness_probe is not None,
            "liveness_probe": route.liveness_probe is not None,
            "instances": [
                {
                    "address": i.address,
                    "ready": i.ready,
                    "readiness_failures": i.readiness_failures,
                    "liveness_failures": i.liveness_failures,
                }
                for i in deployment.members
            ],
        }
    return {"deployments": deployments}

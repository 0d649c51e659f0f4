"""Admission (Azure's 2 x max_concurrent x instances) and lossless config swaps."""

from __future__ import annotations

import asyncio

from reconciler.router.config import DeploymentRoute, RouterConfig
from reconciler.router.runtime import Runtime


def _config(instances: tuple[str, ...], *, traffic: int = 100) -> RouterConfig:
    route = DeploymentRoute(name="blue", instances=instances, max_queue_wait_ms=100)
    return RouterConfig(
        endpoint="ep", deployments=(route,), traffic=(("blue", traffic),) if traffic else ()
    )


def test_admission_limit_queue_and_hand_over() -> None:
    async def scenario() -> None:
        runtime = Runtime(_config(("a:1",)))
        blue = runtime.deployments["blue"]
        assert blue.limit == 2
        assert await blue.admit(0.1) and await blue.admit(0.1)
        assert not await blue.admit(0.05)  # full, nobody leaves: refused after the wait
        waiting = asyncio.ensure_future(blue.admit(1.0))
        await asyncio.sleep(0.01)
        assert blue.queued == 1
        blue.release()  # the slot goes straight to the waiter
        assert await waiting
        assert blue.in_flight == 2 and blue.queued == 0
        blue.release()
        blue.release()
        assert blue.in_flight == 0

    asyncio.run(scenario())


def test_swap_keeps_counts_and_connections_of_kept_instances() -> None:
    async def scenario() -> None:
        runtime = Runtime(_config(("a:1", "b:1")))
        blue = runtime.deployments["blue"]
        kept = blue.instances[0]
        assert await blue.admit(0)
        kept.busy += 1
        runtime.apply(_config(("a:1", "c:1", "d:1"), traffic=0))
        assert runtime.deployments["blue"] is blue
        assert blue.instances[0] is kept and kept.busy == 1
        assert blue.in_flight == 1 and blue.limit == 6
        assert runtime.chooser.pick(0.5) is None
        waiter_config = _config(())
        runtime.apply(waiter_config)
        assert blue.limit == 0 and all(i.retired for i in (kept,))
        kept.finished()  # its last request ends: the pool closes now

    asyncio.run(scenario())


def test_workers_divide_the_limit() -> None:
    runtime = Runtime(_config(("a:1", "b:1", "c:1")), workers=4)
    assert runtime.deployments["blue"].limit == 2  # ceil(6 / 4)

"""The Ray Serve application's scaling (`server/ray_serve.py`), on Ray Serve's own objects: the autoscaling
policy on sessions held, fed a real `AutoscalingContext` as Serve's controller builds it, against the rule
written out here; and the deployments `build` makes (fixed replicas, or autoscaling with that policy)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.autoscaling_state import _resolve_policy_callable  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.config import AutoscalingContext  # noqa: E402

from videokv.server.ray_serve import ServeOptions, SessionsPolicy, build  # noqa: E402


def context(held: list[int], lo: int, hi: int) -> AutoscalingContext:
    """What Serve's controller hands a custom policy: per-replica `sessions` (record_autoscaling_stats)."""
    dep = DeploymentID(name="VideoKVReplica", app_name="videokv")
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(len(held))]
    return AutoscalingContext(
        deployment_id=dep,
        deployment_name="VideoKVReplica",
        app_name="videokv",
        current_num_replicas=len(held),
        target_num_replicas=len(held),
        running_replicas=ids,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=lambda: {"sessions": {r: float(n) for r, n in zip(ids, held)}},
        raw_metrics=None,
        capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi,
        policy_state={"seen": 1},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=None,
    )


@pytest.mark.parametrize("target", [1, 3, 8])
@pytest.mark.parametrize("held", [[], [0], [0, 0], [1, 2], [3, 3, 3], [8, 0], [20, 5, 1, 0]])
def test_sessions_policy_asks_for_room_for_the_next_session(held: list[int], target: int):
    for lo, hi in ((1, 4), (2, 3), (1, 1)):
        want, state = SessionsPolicy(target=target)(context(held, lo, hi))
        # the rule: replicas for every session held plus the next one, `target` sessions each, within bounds
        expected = min(hi, max(lo, math.ceil((sum(held) + 1) / target)))
        assert want == expected and state == {"seen": 1}, (held, target, lo, hi)


def deployments(options: ServeOptions) -> dict:
    """The deployments of the application `build` makes: the router and the replica bound into it."""
    router = build(options)._bound_deployment
    replica = next(a for a in router.init_args if hasattr(a, "_bound_deployment"))._bound_deployment
    return {d.name: d for d in (router, replica)}


def test_build_makes_fixed_or_autoscaled_replicas_with_the_policy():
    fixed = deployments(ServeOptions(replicas=3, replica_cpus=0.5))
    assert set(fixed) == {"VideoKVRouter", "VideoKVReplica"}
    assert (fixed["VideoKVReplica"].num_replicas, fixed["VideoKVRouter"].num_replicas) == (3, 1)
    assert fixed["VideoKVReplica"]._deployment_config.autoscaling_config is None
    assert fixed["VideoKVReplica"].ray_actor_options["num_cpus"] == 0.5
    # autoscaling between --replicas and --max-replicas, on sessions held, with the default target
    # (half of --max-sessions) or --target-sessions
    for target, max_sessions in ((None, 16), (3, 16)):
        scaled = deployments(
            ServeOptions(replicas=2, max_replicas=5, target_sessions=target, max_sessions=max_sessions)
        )
        config = scaled["VideoKVReplica"]._deployment_config.autoscaling_config
        assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (2, 2, 5)
        per = target or max_sessions // 2
        policy = _resolve_policy_callable(config.policy)  # as Serve's controller does
        for held in ([0, 0], [4, 4], [9, 9], [30, 30]):
            want, _ = policy(context(held, 2, 5))
            assert want == min(5, max(2, math.ceil((sum(held) + 1) / per))), (target, held)

"""The Ray Serve application's scaling (`server/ray_serve.py`), on Ray Serve's own objects: the autoscaling
policy on sessions held, fed a real `AutoscalingContext` as Serve's controller builds it, against the rule
written out here; the deployments `build` makes (fixed replicas, or autoscaling with that policy); and the Ray
token auth `videokv serve --ray` runs its driver with (`ray_auth_mode`, before Ray is imported)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.autoscaling_state import _resolve_policy_callable  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.config import AutoscalingContext  # noqa: E402

from videokv.server.ray_serve import (  # noqa: E402
    ServeOptions,
    SessionsPolicy,
    _join_error,
    build,
    ray_auth_mode,
    ray_auth_summary,
    ray_token_source,
)


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


def test_ray_token_source_follows_rays_order(tmp_path: Path):
    """RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH names, then $HOME/.ray/auth_token; an empty file is
    no token, and a RAY_AUTH_TOKEN_PATH naming none is an error, not a fall back to the home file."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    named = tmp_path / "tok"
    named.write_text("a" * 64 + "\n")
    env = {"HOME": str(home)}
    assert ray_token_source(env) is None
    (home / ".ray" / "auth_token").write_text("  \n")
    assert ray_token_source(env) is None
    (home / ".ray" / "auth_token").write_text("b" * 64)
    assert ray_token_source(env) == str(home / ".ray" / "auth_token")
    assert ray_token_source({**env, "RAY_AUTH_TOKEN_PATH": str(named)}) == f"RAY_AUTH_TOKEN_PATH={named}"
    full = {**env, "RAY_AUTH_TOKEN_PATH": str(named), "RAY_AUTH_TOKEN": "c" * 64}
    assert ray_token_source(full) == "RAY_AUTH_TOKEN"
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH=.*no readable"):
            ray_token_source({**env, "RAY_AUTH_TOKEN_PATH": str(bad)})


@pytest.mark.parametrize("address", [None, "auto", "10.0.0.1:6379", "ray://head:10001"])
def test_ray_auth_mode_turns_token_auth_on_to_join_wherever_a_token_is_found(address, tmp_path: Path):
    """An explicit RAY_AUTH_MODE is kept; a local cluster (no address) is Ray's to decide (token auth on,
    generating a token where none is found); joining one, token auth is on exactly when a token is found
    (Ray alone keeps it off for an explicit address, and then cannot join a cluster with token auth)."""
    home = tmp_path / "home"
    home.mkdir()
    named = tmp_path / "tok"
    named.write_text("a" * 64)
    none = {"HOME": str(home)}
    found = {**none, "RAY_AUTH_TOKEN_PATH": str(named)}
    joining = address is not None
    assert ray_auth_mode(address, none) is None
    assert ray_auth_mode(address, found) == ("token" if joining else None)
    assert ray_auth_mode(address, {**none, "RAY_AUTH_TOKEN": "x" * 64}) == ("token" if joining else None)
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("b" * 64)  # as a local Ray leaves it
    assert ray_auth_mode(address, none) == ("token" if joining else None)
    for explicit in ("disabled", "token", "DISABLED"):
        assert ray_auth_mode(address, {**found, "RAY_AUTH_MODE": explicit}) is None
    empty = tmp_path / "empty_home"
    empty.mkdir()
    nothing = {"HOME": str(empty), "RAY_AUTH_MODE": "token"}
    if joining:
        with pytest.raises(ValueError, match="RAY_AUTH_MODE=token but no Ray token found"):
            ray_auth_mode(address, nothing)
    else:
        assert ray_auth_mode(address, nothing) is None  # Ray generates ~/.ray/auth_token
    with pytest.raises(ValueError, match="no readable"):
        ray_auth_mode(address, {**none, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_ray_auth_summary_names_the_mode_and_the_tokens_source(tmp_path: Path):
    named = tmp_path / "tok"
    named.write_text("a" * 64)
    home = {"HOME": str(tmp_path)}
    assert ray_auth_summary(home) == "Ray auth: disabled"
    assert ray_auth_summary({**home, "RAY_AUTH_MODE": "disabled"}) == "Ray auth: disabled"
    on = {**home, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(named)}
    assert ray_auth_summary(on) == f"Ray auth: token (from RAY_AUTH_TOKEN_PATH={named})"
    assert ray_auth_summary({**home, "RAY_AUTH_MODE": "token"}) == "Ray auth: token (from nowhere)"


def test_a_refused_token_is_told_apart_from_other_join_failures(monkeypatch):
    """ray.init raises ConnectionError from a RuntimeError holding the last retry's traceback as text (the
    AuthenticationError is not chained): either way the message says where the cluster's token goes."""
    from ray.exceptions import AuthenticationError

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    text = "Failed to connect to GCS. Last connection error: ... RPC error: InvalidAuthToken: missing"
    refused = []
    for inner in (RuntimeError(text), AuthenticationError("bad token")):
        try:
            try:
                raise inner
            except Exception as e:
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e
        except ConnectionError as outer:
            refused.append(_join_error("10.0.0.1:6379", outer))
    for message in refused:
        assert "the Ray cluster at 10.0.0.1:6379 refused this process (Ray auth: disabled)" in message
        assert "RAY_AUTH_TOKEN_PATH" in message and "Ray token auth" in message
    other = _join_error(None, ConnectionError("no route"))
    assert other == "videokv serve: could not start or join a local Ray cluster: no route"

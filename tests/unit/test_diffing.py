"""diffing: pairing by key, field changes, scale versus update, autoscaling bounds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied, diff, field_changes, target_count
from reconciler.model.plan import FieldChange
from reconciler.model.specs import CodeSpec, DeploymentSpec, ScaleSettings
from reconciler.model.state import DesiredState, LiveState, ResolvedConnection


def state(*specs: object) -> DesiredState:
    eps = tuple(s for s in specs if type(s).__name__ == "EndpointSpec")
    deps = tuple(s for s in specs if type(s).__name__ == "DeploymentSpec")
    return DesiredState(eps, deps)  # type: ignore[arg-type]


def test_field_changes_are_dotted_paths_sorted() -> None:
    changes = field_changes(
        {"a": 1, "env": {"image": "x", "digest": "d1"}},
        {"a": 2, "env": {"image": "y", "digest": "d1"}},
    )
    assert changes == (FieldChange("a", 1, 2), FieldChange("env.image", "x", "y"))


def test_a_change_inside_a_list_is_reported_as_the_whole_list() -> None:
    changes = field_changes({"pip": ["numpy", "scipy"]}, {"pip": ["numpy", "pandas", "x"]})
    assert changes == (FieldChange("pip", ["numpy", "scipy"], ["numpy", "pandas", "x"]),)


def test_added_and_removed_fields_use_none_for_the_missing_side() -> None:
    assert field_changes({"a": 1}, {"b": 2}) == (
        FieldChange("a", 1, None),
        FieldChange("b", None, 2),
    )


def test_equal_inputs_have_no_changes() -> None:
    assert field_changes({"a": {"b": [1]}}, {"a": {"b": [1]}}) == ()


def test_instance_count_is_a_scale_change_not_an_update() -> None:
    old = state(endpoint(traffic={"blue": 100}), deployment())
    new = state(endpoint(traffic={"blue": 100}), deployment(instance_count=3))
    (ep,) = diff(new, assume_applied(old), prune=False)
    (dep,) = ep.deployments
    assert dep.scale_changes == (FieldChange("instance_count", 1, 3),)
    assert dep.update_changes == ()
    assert not dep.scales_down


def test_a_code_digest_change_is_an_update() -> None:
    old = state(endpoint(), deployment())
    new = state(endpoint(), deployment(code=CodeSpec("src", "score.py", digest="sha256:c2")))
    (dep,) = diff(new, assume_applied(old), prune=False)[0].deployments
    assert dep.update_changes == (FieldChange("code.digest", "sha256:c1", "sha256:c2"),)
    assert not dep.replace


def test_an_instance_type_change_replaces_instances() -> None:
    old = state(endpoint(), deployment())
    new = state(endpoint(), deployment(instance_type="Standard_DS2_v2"))
    (dep,) = diff(new, assume_applied(old), prune=False)[0].deployments
    assert dep.replace
    assert FieldChange("instance_type", "Standard_DS3_v2", "Standard_DS2_v2") in dep.update_changes


def test_only_a_digest_is_known_then_the_change_is_a_digest_change() -> None:
    old = state(endpoint(), deployment())
    live = assume_applied(old)
    live = replace(live, deployments=tuple(replace(d, spec=None) for d in live.deployments))
    new = state(endpoint(), deployment(environment_variables=(("A", "1"),)))
    (dep,) = diff(new, live, prune=False)[0].deployments
    assert [c.path for c in dep.update_changes] == ["digest"]


def test_an_applied_base_leaves_digests_to_its_specs_and_diffs_as_with_them() -> None:
    old = state(endpoint(), deployment("blue"), deployment("green"))
    live = assume_applied(old)
    assert [d.digest for d in live.deployments] == ["", ""]
    assert [d.spec_digest for d in live.deployments] == [d.digest for d in old.deployments]
    given = replace(
        live, deployments=tuple(replace(d, digest=d.spec_digest) for d in live.deployments)
    )
    # blue unchanged (the very same spec object, as an unchanged file gives), green updated.
    new = state(
        endpoint(), old.deployments[0], deployment("green", environment_variables=(("A", "1"),))
    )
    for base in (live, given):
        blue, green = diff(new, base, prune=False)[0].deployments
        assert blue.update_changes == () and blue.scale_changes == ()
        assert [c.path for c in green.update_changes] == ["environment_variables.A"]
    # Without the spec, only the digest known: the change is said as a digest change.
    digest_only = replace(
        given, deployments=tuple(replace(d, spec=None) for d in given.deployments)
    )
    (_, green) = diff(new, digest_only, prune=False)[0].deployments
    assert green.update_changes == (
        FieldChange("digest", old.deployments[1].digest, new.deployments[1].digest),
    )


def test_autoscaler_count_inside_bounds_is_left_alone() -> None:
    auto = ScaleSettings("target_utilization", 1, 5, 70, 1)
    spec = deployment(scale_settings=auto, instance_count=1)
    assert target_count(spec, 4) == 4
    assert target_count(spec, 9) == 5
    assert target_count(spec, 0) == 1


def test_endpoint_declared_nowhere_is_kept_without_prune_and_deleted_with_it() -> None:
    live = assume_applied(state(endpoint("old", traffic={"blue": 100}), deployment(endpoint="old")))
    kept = diff(DesiredState(), live, prune=False)[0]
    assert kept.kept_unpruned and not kept.is_delete and kept.deployments == ()
    pruned = diff(DesiredState(), live, prune=True)[0]
    assert pruned.is_delete and pruned.deployments[0].is_delete


def test_unreadable_endpoints_are_never_planned() -> None:
    live = replace(
        assume_applied(state(endpoint("x"), deployment(endpoint="x"))), unreadable=("x",)
    )
    assert diff(DesiredState(), live, prune=True) == ()


def test_endpoint_fields_unknown_to_the_target_are_not_compared() -> None:
    desired = state(endpoint(description="new words", auth_mode="aml_token"))
    live = assume_applied(state(endpoint(description="old words")))
    live = LiveState(endpoints=tuple(replace(e, spec_known=False) for e in live.endpoints))
    (ep,) = diff(desired, live, prune=False)
    assert ep.endpoint_changes == (FieldChange("auth_mode", "key", "aml_token"),)


KEY_REF = "${{azureml://connections/openai/credentials/api-key}}"


def live_with_connections(spec: DeploymentSpec, *found: ResolvedConnection) -> LiveState:
    """`spec` running, its connections as a target reports them."""
    applied = assume_applied(state(endpoint(), spec))
    (dep,) = applied.deployments
    return replace(applied, deployments=(replace(dep, connections=found),))


def test_a_connection_whose_values_changed_is_an_update_of_the_same_spec() -> None:
    spec = deployment(environment_variables=(("API_KEY", KEY_REF), ("PLAIN", "x")))
    changed = ResolvedConnection("openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb")
    live = live_with_connections(spec, changed)
    (dep,) = diff(state(endpoint(), spec), live, prune=False)[0].deployments
    assert dep.update_changes == (
        FieldChange("connections.openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb"),
    )
    assert dep.scale_changes == () and not dep.replace


def test_a_connection_change_is_listed_among_the_spec_changes_by_path() -> None:
    spec = deployment(environment_variables=(("API_KEY", KEY_REF),))
    live = live_with_connections(
        spec, ResolvedConnection("openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb")
    )
    newer = replace(spec, code=CodeSpec("src", "score.py", digest="sha256:c2"))
    (dep,) = diff(state(endpoint(), newer), live, prune=False)[0].deployments
    assert [c.path for c in dep.update_changes] == ["code.digest", "connections.openai"]


def test_unchanged_missing_or_no_longer_referenced_connections_change_nothing() -> None:
    spec = deployment(environment_variables=(("API_KEY", KEY_REF),))
    same = ResolvedConnection("openai", "hmac-sha256:aaaa", "hmac-sha256:aaaa")
    # Deleted since: new instances could not start; the running ones keep serving.
    missing = ResolvedConnection("openai", "hmac-sha256:aaaa", None)
    for found in (same, missing):
        (dep,) = diff(state(endpoint(), spec), live_with_connections(spec, found), prune=False)[
            0
        ].deployments
        assert not dep.changed, found
    # The declared spec no longer names it: the spec change alone is the update.
    plain = replace(spec, environment_variables=())
    changed = ResolvedConnection("openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb")
    (dep,) = diff(state(endpoint(), plain), live_with_connections(spec, changed), prune=False)[
        0
    ].deployments
    assert [c.path for c in dep.update_changes] == ["environment_variables.API_KEY"]


def test_instances_that_recorded_no_values_are_changed_once_values_can_be_compared() -> None:
    spec = deployment(environment_variables=(("API_KEY", KEY_REF),))
    unrecorded = ResolvedConnection("openai", None, "hmac-sha256:bbbb")
    (dep,) = diff(state(endpoint(), spec), live_with_connections(spec, unrecorded), prune=False)[
        0
    ].deployments
    assert dep.update_changes == (FieldChange("connections.openai", None, "hmac-sha256:bbbb"),)


def _deepdiff_field_changes(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[FieldChange, ...]:
    """field_changes as it was written with deepdiff, the reference the new one keeps."""
    from deepdiff import DeepDiff

    def at(data: Any, path: list[Any]) -> Any:
        node = data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def present(value: Any) -> Any:
        return None if type(value).__name__ == "NotPresent" else value

    differing = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
    # The old pre-filter dropped equal values of different types at the top level only.
    before = {k: before[k] for k in differing if k in before}
    after = {k: after[k] for k in differing if k in after}
    found: dict[str, FieldChange] = {}
    for levels in DeepDiff(before, after, view="tree", ignore_order=False).values():
        for level in levels:
            path = level.path(output_format="list")
            cut = next((i for i, part in enumerate(path) if isinstance(part, int)), None)
            if cut is not None:
                path = path[:cut]
                old, new = at(before, path), at(after, path)
            else:
                old, new = present(level.t1), present(level.t2)
            if not path:
                # deepdiff names the root when every key differs: reported key by key.
                for name in set(before) | set(after):
                    old, new = at(before, [name]), at(after, [name])
                    if old != new:
                        found[name] = FieldChange(name, old, new)
                continue
            dotted = ".".join(str(p) for p in path)
            found[dotted] = FieldChange(dotted, old, new)
    return tuple(found[k] for k in sorted(found))


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.text("ab", max_size=2),
)
_json_values = st.recursive(
    _json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("xyz"), inner, max_size=3)
    ),
    max_leaves=8,
)
_json_docs = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _json_values, max_size=4)


@settings(max_examples=200, deadline=None)
@given(before=_json_docs, after=_json_docs)
def test_field_changes_give_the_answers_deepdiff_gave(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    # Equal values of different types below the top level (1 and 1.0 in a list) are the one
    # place the pre-filter and deepdiff disagree with plain equality: both sides keep it.
    assert field_changes(before, after) == _deepdiff_field_changes(before, after)

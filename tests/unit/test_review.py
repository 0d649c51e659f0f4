"""review: what a change touches per deployment, and how the markdown comment shows it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from specs_factory import ENV, deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.filetree import FileTree, MemoryTree
from reconciler.model.specs import CodeSpec, ModelSpec, Resources, SourceLocation
from reconciler.model.state import DesiredState
from reconciler.planning import make_plan
from reconciler.presentation import PackageChange, plan_markdown
from reconciler.review import mirror_history, package_changes, quota_warnings, review_changes


def kinds(changes: tuple[PackageChange, ...]) -> dict[str, tuple[str, str | None, str | None]]:
    return {c.name: (c.kind, c.before, c.after) for c in changes}


def test_pip_packages_added_removed_upgraded_downgraded_changed() -> None:
    before = ["numpy>=1.26,<3", "scipy", "Pandas==2.0", "requests==2.32", "torch[cpu]>=2"]
    after = ["numpy==2.1.0", "pandas==1.5", "scikit_learn>=1.4", "requests==2.32", "torch>=2"]
    assert kinds(package_changes(before, after, manager="pip")) == {
        "numpy": ("upgraded", "numpy>=1.26,<3", "numpy==2.1.0"),
        "pandas": ("downgraded", "Pandas==2.0", "pandas==1.5"),
        "scipy": ("removed", "scipy", None),
        "scikit-learn": ("added", None, "scikit_learn>=1.4"),
        "torch": ("changed", "torch[cpu]>=2", "torch>=2"),
    }


def test_conda_packages_with_channels_and_builds() -> None:
    before = ["python=3.10", "conda-forge::numpy=1.26=py311_0", "pip"]
    after = ["python=3.11", "numpy=1.26=py311_1", "pip"]
    assert kinds(package_changes(before, after, manager="conda")) == {
        "python": ("upgraded", "python=3.10", "python=3.11"),
        "numpy": ("changed", "conda-forge::numpy=1.26=py311_0", "numpy=1.26=py311_1"),
    }


def test_pip_option_lines_are_kept_as_they_are() -> None:
    changes = package_changes([], ["--extra-index-url https://example.org/simple"], manager="pip")
    assert [c.kind for c in changes] == ["added"]


def _tree(files: dict[str, str]) -> MemoryTree:
    return MemoryTree({path: text.encode() for path, text in files.items()})


def _states() -> tuple[DesiredState, DesiredState]:
    env2 = replace(
        ENV,
        version="2",
        pip_packages=("numpy==2.1.0", "pandas>=2"),
        digest="sha256:e2",
    )
    base = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (
            deployment(
                "blue",
                instance_count=2,
                environment=replace(ENV, pip_packages=("numpy>=1.26", "scipy")),
            ),
        ),
    )
    head = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (
            deployment(
                "blue",
                instance_count=3,
                instance_type="Standard_DS4_v2",
                environment=env2,
                model=ModelSpec("m", "2", "models/m2", digest="sha256:" + "b" * 64),
                code=CodeSpec("src", "score.py", digest="sha256:c2"),
            ),
            deployment("green", instance_count=1),
        ),
    )
    return base, head


def test_a_changed_deployment_shows_model_code_packages_and_quota() -> None:
    base, head = _states()
    base_tree = _tree({"src/score.py": "v1", "src/util.py": "same", "src/old.py": "x"})
    head_tree = _tree({"src/score.py": "v2", "src/util.py": "same", "src/new.py": "y"})
    plan = make_plan(head, assume_applied(base), prune=False)
    review = review_changes(
        plan, base_tree, head_tree, base=base, head=head, target="local", capacity_cores=40
    )
    blue, green = review.deployments
    assert (blue.status, green.status) == ("changed", "new")
    assert (blue.model_before, blue.model_after) == ("m:1", "m:2")
    assert [(c.path, c.kind) for c in blue.code_files] == [
        ("new.py", "added"),
        ("old.py", "removed"),
        ("score.py", "modified"),
    ]
    assert {p.name: p.kind for p in blue.packages} == {
        "numpy": "upgraded",
        "pandas": "added",
        "scipy": "removed",
    }
    # DS3: 4 cores, DS4: 8 cores. ceil(1.2 x 2) x 4 = 12; ceil(1.2 x 3) x 8 = 32.
    assert (blue.quota_before, blue.quota_after) == (12, 32)
    assert (green.quota_after, green.code_file_count) == (8, 3)
    assert (review.quota_before, review.quota_after) == (12, 40)
    assert quota_warnings(review) == ()

    md = plan_markdown(plan, review=review)
    assert "### What changes" in md
    assert (
        "- **instances** `Standard_DS3_v2` x 2 → `Standard_DS4_v2` x 3 (instances replaced); "
        "quota ceil(1.2 x 3) x 8 = **32 cores** (was 12)" in md
    )
    assert "- **model** `m:1` → `m:2` · `sha256:m1` → `sha256:bbbbbbbbbbbb`" in md
    assert (
        "- **code** `src`: 3 files changed: `new.py` (added), `old.py` (removed), "
        "`score.py` (modified)" in md
    )
    assert (
        "- **environment** `env:1` → `env:2`: added `pandas>=2`; removed `scipy`; "
        "upgraded `numpy>=1.26` → `numpy==2.1.0`" in md
    )
    assert "#### `ep/green` (new)" in md
    assert "12 → **40** cores, fits the 40 cores of target `local`" in md


def test_quota_beyond_the_capacity_is_a_warning() -> None:
    base, head = _states()
    plan = make_plan(head, assume_applied(base), prune=False)
    tree = _tree({"src/score.py": "v1"})
    review = review_changes(
        plan, tree, tree, base=base, head=head, target="local", capacity_cores=16
    )
    (warning,) = quota_warnings(review)
    assert (warning.file, warning.field) == ("reconciler.yaml", "targets.local.capacity_cores")
    assert "need 40 cores of quota" in warning.message
    assert "where target local has 16" in warning.message
    assert "ep/blue 32, ep/green 8" in warning.message
    assert "**exceeds** the 16 cores" in plan_markdown(plan, review=review)


def test_mirror_history_walks_back_until_the_mirror_was_off() -> None:
    base = DesiredState(
        (
            endpoint(
                traffic={"blue": 100},
                mirror={"green": 10},
                source=SourceLocation("endpoints/ep/endpoint.yml", 1),
            ),
        ),
        (deployment("blue"), deployment("green")),
    )
    on = _tree({"endpoints/ep/endpoint.yml": "name: ep\nmirror_traffic: {green: 10}\n"})
    off = _tree({"endpoints/ep/endpoint.yml": "name: ep\ntraffic: {blue: 100}\n"})
    opened: list[int] = []

    def opener(when: int, tree: FileTree) -> tuple[int, Callable[[], FileTree]]:
        def open_tree() -> FileTree:
            opened.append(when)
            return tree

        return when, open_tree

    commits = [opener(500, on), opener(400, on), opener(300, off), opener(200, on)]
    history = mirror_history(
        commits,
        base=base,
        deployments=[("ep", "green")],
        now=1000.0,
        complete=False,
    )
    entry = history.since("ep", "green")
    assert entry is not None
    assert (entry.since, entry.complete) == (400.0, True)
    assert opened == [500, 400, 300]  # the walk stops where the mirror was off
    # Still mirrored where the history ends: `since` is only a bound.
    cut = mirror_history(
        commits[:2],
        base=base,
        deployments=[("ep", "green")],
        now=1000.0,
        complete=False,
    )
    entry = cut.since("ep", "green")
    assert entry is not None and not entry.complete


def test_a_deployment_sized_by_resources_alone_counts_its_cpu_in_the_quota() -> None:
    """A Kubernetes deployment with `resources` and no instance type: its CPU request (else
    its limit; a part of a core counts whole) are the cores of one instance."""
    sized = Resources(requests=(("cpu", "1500m"), ("memory", "2Gi")), limits=(("cpu", "4"),))
    base = DesiredState((endpoint(traffic={"blue": 100}),), ())
    head = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (
            deployment("blue", instance_count=2, instance_type=None, resources=sized),
            deployment(
                "green",
                instance_count=1,
                instance_type=None,
                resources=Resources(limits=(("cpu", "3"),)),
            ),
        ),
    )
    plan = make_plan(head, assume_applied(base), prune=False)
    tree = _tree({"src/score.py": "v1"})
    review = review_changes(plan, tree, tree, base=base, head=head, target="k8s")
    blue, green = review.deployments
    # ceil(1.2 x 2) x 2 = 6; ceil(1.2 x 1) x 3 = 6.
    assert (blue.cores_after, blue.quota_after) == (2, 6)
    assert (green.cores_after, green.quota_after) == (3, 6)
    assert review.quota_after == 12
    md = plan_markdown(plan, review=review)
    assert "quota ceil(1.2 x 2) x 2 = **6 cores**" in md
    assert "0 → **12** cores" in md

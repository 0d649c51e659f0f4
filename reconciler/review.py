"""What a change touches, per deployment, for the people reviewing a pull request.

`reconcile diff` plans from BASE to HEAD; this module adds what a reviewer needs beyond the
steps, for each deployment that has a step or whose traffic share moves: the model
(name:version and content digest, before and after), the files of the code folder that
changed (by git blob id, so nothing is read but the listing), the environment's packages
added, removed, upgraded or downgraded (pip requirements parsed with `packaging` when it is
installed, conda match specs by hand), and the instances with the quota figure ceil(1.2 x
instance_count) x cores (Azure ML's rule) for the deployment and summed over the
repository, against the target's `capacity_cores` in reconciler.yaml, with a warning when
the sum exceeds it.

It also works out, from the base branch's history, since when a deployment has been
mirrored (for the mirror_before_traffic policy): given the commits of a first-parent walk
(newest first, from reconciler.gitsource) it reads only the endpoint's file at each commit
and stops at the first commit where the deployment is not mirrored.

It reads FileTrees, so it sits at the loading layer; the values it returns are the plain
dataclasses of reconciler.presentation, which renders them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import yaml

from reconciler.diffing import target_count
from reconciler.filetree import Digester, FileTree, TreeEntryError
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.instance_types import (
    DEFAULT_INSTANCE_TYPES,
    InstanceType,
    quota_cores,
    resource_cores,
)
from reconciler.model.plan import Action, Plan
from reconciler.model.specs import DeploymentSpec, EnvironmentSpec, ModelSpec, weight_of
from reconciler.model.state import DesiredState
from reconciler.policies import POLICY_FILE, MirrorHistory, MirrorSince
from reconciler.presentation import (
    CodeFileChange,
    DeploymentReview,
    PackageChange,
    Review,
    RolloutPreview,
)
from reconciler.rollouts.policy import RolloutPolicies

__all__ = ["mirror_history", "package_changes", "quota_warnings", "review_changes"]

# Pip requirement lines that are options, not packages (-r, --extra-index-url, ...).
_PIP_OPTION: Final = re.compile(r"^\s*-")
_NAME: Final = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_CONDA: Final = re.compile(r"^\s*(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9._-]*)\s*(.*)$")
_VERSION: Final = re.compile(r"[0-9]+(?:\.[0-9A-Za-z]+)*")


def review_changes(
    plan: Plan,
    base_tree: FileTree | None,
    head_tree: FileTree,
    *,
    base: DesiredState,
    head: DesiredState,
    target: str | None = None,
    capacity_cores: int | None = None,
    instance_types: Mapping[str, InstanceType] = DEFAULT_INSTANCE_TYPES,
) -> Review:
    """The review of every deployment the plan has a step for or whose share moves."""
    old = {(d.endpoint_name, d.name): d for d in base.deployments}
    new = {(d.endpoint_name, d.name): d for d in head.deployments}
    stepped = {(s.endpoint, s.deployment) for s in plan.steps if s.deployment is not None}
    # Shares as the plan sees them: an endpoint that pruning leaves alone keeps its traffic.
    shares: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for summary in plan.endpoints:
        for name in summary.deployments:
            shares[(summary.endpoint, name)] = (
                weight_of(summary.traffic_before, name),
                weight_of(summary.traffic_after, name),
                weight_of(summary.mirror_before, name),
                weight_of(summary.mirror_after, name),
            )
    # Deployments whose share moves are reviewed too: their instances meet the new load.
    moved = {k for k, (tb, ta, mb, ma) in shares.items() if (tb, mb) != (ta, ma)}
    # Sorted by name rather than in plan order: a reviewer looks a deployment up.
    keys = sorted(stepped | moved)
    old_digester = Digester(base_tree) if base_tree is not None else None
    new_digester = Digester(head_tree)
    reviews = tuple(
        _review_one(
            old.get(key),
            new.get(key),
            key=key,
            status=_status(old.get(key), new.get(key)) if key in stepped else "traffic",
            share=shares.get(key, (0, 0, 0, 0)),
            digesters=(old_digester, new_digester),
            instance_types=instance_types,
        )
        for key in keys
    )
    deleted = {
        (s.endpoint, s.deployment) for s in plan.steps if s.action == Action.DELETE_DEPLOYMENT
    }
    declared = {e.name for e in head.endpoints}
    # Endpoints that no file declares any more but that pruning leaves alone keep running:
    # they still hold their quota after the change.
    kept = [d for key, d in old.items() if d.endpoint_name not in declared and key not in deleted]
    return Review(
        deployments=reviews,
        target=target,
        capacity_cores=capacity_cores,
        quota_before=_quota_total(base.deployments, instance_types),
        quota_after=_quota_total((*head.deployments, *kept), instance_types),
    )


def _status(before: DeploymentSpec | None, after: DeploymentSpec | None) -> str:
    return "new" if before is None else "deleted" if after is None else "changed"


def quota_warnings(review: Review) -> tuple[Diagnostic, ...]:
    """A warning when the deployments' quota after the change exceeds the capacity."""
    if review.capacity_cores is None or review.quota_after <= review.capacity_cores:
        return ()
    biggest = sorted(
        (r for r in review.deployments if r.quota_after),
        key=lambda r: (-(r.quota_after or 0), r.endpoint, r.deployment),
    )
    shown = ", ".join(f"{r.endpoint}/{r.deployment} {r.quota_after}" for r in biggest[:5])
    return (
        Diagnostic(
            POLICY_FILE,
            None,
            f"targets.{review.target}.capacity_cores",
            f"the deployments need {review.quota_after} cores of quota "
            f"(ceil(1.2 x instance_count) x cores, summed; was {review.quota_before}) where "
            f"target {review.target} has {review.capacity_cores}"
            + (f"; changed here: {shown}" if shown else ""),
        ),
    )


def _quota_total(
    deployments: Iterable[DeploymentSpec], instance_types: Mapping[str, InstanceType]
) -> int:
    total = 0
    for spec in deployments:
        cores = _cores(spec, instance_types)
        if cores is not None:
            total += quota_cores(target_count(spec, None), cores)
    return total


def _cores(spec: DeploymentSpec, instance_types: Mapping[str, InstanceType]) -> int | None:
    """Cores of one instance: its instance type's, else (Kubernetes, no instance type) its
    `resources`' CPU; None when neither says."""
    kind = instance_types.get(spec.instance_type or "")
    if kind is not None:
        return kind.cores
    return resource_cores(spec.resources) if not spec.instance_type else None


def _review_one(
    before: DeploymentSpec | None,
    after: DeploymentSpec | None,
    *,
    key: tuple[str, str],
    status: str,
    share: tuple[int, int, int, int],  # traffic before, after; mirror before, after
    digesters: tuple[Digester | None, Digester],
    instance_types: Mapping[str, InstanceType],
) -> DeploymentReview:

    def instances(spec: DeploymentSpec | None) -> tuple[int | None, int | None, int | None]:
        if spec is None:
            return None, None, None
        count = target_count(spec, None)
        cores = _cores(spec, instance_types)
        if cores is None:
            return count, None, None
        return count, cores, quota_cores(count, cores)

    count_before, cores_before, quota_before = instances(before)
    count_after, cores_after, quota_after = instances(after)
    model_before, model_after = (s.model if s is not None else None for s in (before, after))
    code_before, code_after = (s.code if s is not None else None for s in (before, after))
    env_before, env_after = (s.environment if s is not None else None for s in (before, after))
    code_files: tuple[CodeFileChange, ...] = ()
    code_count = 0
    old_digester, new_digester = digesters
    if code_after is not None:
        if code_before is None or old_digester is None:
            code_count = len(new_digester.under(code_after.path))
        elif code_before.digest != code_after.digest:
            code_files = _code_changes(
                old_digester, code_before.path, new_digester, code_after.path
            )
    return DeploymentReview(
        endpoint=key[0],
        deployment=key[1],
        status=status,
        model_before=_model_name(model_before),
        model_after=_model_name(model_after),
        model_digest_before=model_before.digest if model_before else None,
        model_digest_after=model_after.digest if model_after else None,
        code_before=code_before.path if code_before else None,
        code_after=code_after.path if code_after else None,
        code_files=code_files,
        code_file_count=code_count,
        environment_before=_environment_name(env_before),
        environment_after=_environment_name(env_after),
        environment_digest_before=env_before.digest if env_before else None,
        environment_digest_after=env_after.digest if env_after else None,
        image_before=env_before.image if env_before else None,
        image_after=env_after.image if env_after else None,
        packages=_environment_packages(env_before, env_after),
        instance_type_before=before.instance_type if before else None,
        instance_type_after=after.instance_type if after else None,
        instance_count_before=count_before,
        instance_count_after=count_after,
        cores_before=cores_before,
        cores_after=cores_after,
        quota_before=quota_before,
        quota_after=quota_after,
        traffic_before=share[0],
        traffic_after=share[1],
        mirror_before=share[2],
        mirror_after=share[3],
    )


def _model_name(model: ModelSpec | None) -> str | None:
    return f"{model.name}:{model.version}" if model is not None else None


def _environment_name(env: EnvironmentSpec | None) -> str | None:
    if env is None:
        return None
    if env.name:
        return f"{env.name}:{env.version}" if env.version else env.name
    return env.image or "inline environment"


def _code_changes(
    old: Digester, old_folder: str, new: Digester, new_folder: str
) -> tuple[CodeFileChange, ...]:
    """Files of the code folder added, removed or modified, relative to the folder."""

    def listing(digester: Digester, folder: str) -> dict[str, str]:
        cut = len(folder.strip("/")) + 1 if folder.strip("/") else 0
        return {p[cut:]: digester.tree.blob_id(p) for p in digester.under(folder)}

    before, after = listing(old, old_folder), listing(new, new_folder)
    changes: list[CodeFileChange] = []
    for path in sorted(before.keys() | after.keys()):
        if path not in before:
            changes.append(CodeFileChange(path, "added"))
        elif path not in after:
            changes.append(CodeFileChange(path, "removed"))
        elif before[path] != after[path]:
            changes.append(CodeFileChange(path, "modified"))
    return tuple(changes)


# --------------------------------------------------------------------------------------
# Packages


def _environment_packages(
    before: EnvironmentSpec | None, after: EnvironmentSpec | None
) -> tuple[PackageChange, ...]:
    if after is None or (before is not None and before.digest == after.digest):
        return ()
    if before is None:
        # A new deployment: every package is new; the reviewer sees the list.
        return package_changes((), after.conda_packages, manager="conda") + package_changes(
            (), after.pip_packages, manager="pip"
        )
    return package_changes(
        before.conda_packages, after.conda_packages, manager="conda"
    ) + package_changes(before.pip_packages, after.pip_packages, manager="pip")


def package_changes(
    before: Sequence[str], after: Sequence[str], *, manager: str
) -> tuple[PackageChange, ...]:
    """Packages added, removed, upgraded, downgraded or otherwise changed, by name.

    Requirements are matched by their canonical name (PEP 503: case and -_. ignored);
    upgraded or downgraded compares the version each requirement pins or starts from
    (`==`, `>=`, `~=`, conda's `=`); any other difference is "changed".
    """
    parse = _conda_requirement if manager == "conda" else _pip_requirement
    old = dict(parse(text) for text in before)
    new = dict(parse(text) for text in after)
    changes: list[PackageChange] = []
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name), new.get(name)
        if was is None and now is not None:
            changes.append(PackageChange(name, None, now.text, "added", manager))
        elif now is None and was is not None:
            changes.append(PackageChange(name, was.text, None, "removed", manager))
        elif was is not None and now is not None and was.spec != now.spec:
            changes.append(PackageChange(name, was.text, now.text, _direction(was, now), manager))
    return tuple(changes)


class _Requirement:
    """A requirement as written, its canonical name, its version spec, its base version."""

    __slots__ = ("name", "spec", "text", "version")

    def __init__(self, text: str, name: str, spec: str, version: str | None) -> None:
        self.text = text.strip()
        self.name = name
        self.spec = spec
        self.version = version


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _base_version(spec: str) -> str | None:
    """The version a spec pins or starts from: `==1.2`, `>=1.2,<2`, `~=1.2`, `=1.2`, `1.2`."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    # A pin says most, a lower bound next; an upper bound alone says nothing to compare.
    for operators in (("===", "=="), ("~=", ">=", ">"), ("=", "")):
        for part in parts:
            for op in operators:
                found = _VERSION.match(part[len(op) :].strip()) if part.startswith(op) else None
                if found:
                    return found.group(0)
    return None


def _pep508(text: str) -> tuple[str, _Requirement] | None:
    """A pip requirement read by `packaging` (extras, markers, URLs), when it is installed."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - the plainer reading of _pip_requirement serves
        return None
    try:
        parsed = Requirement(text)
    except InvalidRequirement:
        return None
    spec = str(parsed.specifier) or (parsed.url or "")
    if parsed.extras:
        spec = f"[{','.join(sorted(parsed.extras))}]{spec}"
    if parsed.marker is not None:
        spec += f"; {parsed.marker}"
    name = _canonical(parsed.name)
    return name, _Requirement(text, name, spec, _base_version(str(parsed.specifier)))


def _pip_requirement(text: str) -> tuple[str, _Requirement]:
    if _PIP_OPTION.match(text):
        # An option line (-r file, --extra-index-url): it is its own "name".
        return text.strip(), _Requirement(text, text.strip(), text.strip(), None)
    read = _pep508(text)
    if read is not None:
        return read
    named = _NAME.match(text)
    if named is None:
        return text.strip(), _Requirement(text, text.strip(), text.strip(), None)
    name = _canonical(named.group(1))
    spec = text[named.end() :].replace(" ", "")
    return name, _Requirement(text, name, spec, _base_version(spec))


def _conda_requirement(text: str) -> tuple[str, _Requirement]:
    matched = _CONDA.match(text)
    if matched is None:
        return text.strip(), _Requirement(text, text.strip(), text.strip(), None)
    name = _canonical(matched.group(1))
    spec = matched.group(2).replace(" ", "")
    # conda's `=1.2` means 1.2.*, and `=1.2=build` adds a build string that orders nothing.
    version_spec = spec
    if spec.startswith("=") and not spec.startswith("=="):
        version_spec = "=" + spec[1:].split("=")[0]
    return name, _Requirement(text, name, spec, _base_version(version_spec))


def _direction(was: _Requirement, now: _Requirement) -> str:
    if was.version is None or now.version is None or was.version == now.version:
        return "changed"
    try:
        from packaging.version import InvalidVersion, Version

        older = Version(was.version) < Version(now.version)
    except (ImportError, InvalidVersion):
        older = _numeric(was.version) < _numeric(now.version)
    return "upgraded" if older else "downgraded"


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", version))


# --------------------------------------------------------------------------------------
# Mirror history, for the mirror_before_traffic policy


def mirror_history(
    commits: Iterable[tuple[int | float, Callable[[], FileTree]]],
    *,
    base: DesiredState,
    deployments: Iterable[tuple[str, str]],
    now: float,
    complete: bool,
) -> MirrorHistory:
    """Since when each (endpoint, deployment) has been mirrored without a break.

    commits: the base branch's first-parent history back from BASE, newest first, as
    (commit time, a function that opens its tree); complete: whether that history goes
    back to the first commit. Only the endpoint's file of BASE is read at each commit, and
    the walk stops at the first commit where the deployment is not mirrored (or the file
    is absent or unreadable).
    """
    wanted: dict[str, list[str]] = {}
    for endpoint, deployment in deployments:
        spec = base.endpoint(endpoint)
        if spec is not None and spec.source is not None:
            wanted.setdefault(endpoint, []).append(deployment)
    since: dict[tuple[str, str], float] = {}
    open_keys = {(e, d) for e, names in wanted.items() for d in names}
    ended: set[tuple[str, str]] = set()
    for when, open_tree in commits:
        if not open_keys:
            break
        tree = open_tree()
        for endpoint in sorted({e for e, _ in open_keys}):
            spec = base.endpoint(endpoint)
            assert spec is not None and spec.source is not None
            mirror = _mirror_in(tree, spec.source.file)
            for key in [k for k in open_keys if k[0] == endpoint]:
                if mirror.get(key[1], 0) > 0:
                    since[key] = float(when)
                else:
                    open_keys.discard(key)
                    ended.add(key)
    return MirrorHistory(
        now=now,
        entries=tuple(
            MirrorSince(e, d, t, complete=complete or (e, d) in ended)
            for (e, d), t in sorted(since.items())
        ),
    )


def _mirror_in(tree: FileTree, path: str) -> dict[str, int]:
    """mirror_traffic of an endpoint file at one commit; {} when absent or unreadable."""
    if not tree.is_file(path):
        return {}
    try:
        doc = yaml.safe_load(tree.read(path))
    except (yaml.YAMLError, TreeEntryError):  # a link out of the repository, a FIFO
        return {}
    mirror = doc.get("mirror_traffic") if isinstance(doc, dict) else None
    if not isinstance(mirror, dict):
        return {}
    return {str(k): v for k, v in mirror.items() if isinstance(v, int) and not isinstance(v, bool)}


def rollout_previews(
    base: DesiredState | None, head: DesiredState, policies: RolloutPolicies
) -> tuple[tuple[RolloutPreview, ...], tuple[tuple[str, str], ...]]:
    """The rollouts the change from BASE to HEAD starts under `policies` (HEAD's: the daemon
    reads them at the merged revision), and why an endpoint under a policy starts none
    (endpoint, why): Review's `rollouts` and `rollout_notes`."""
    if base is None or policies.empty:
        return (), ()
    # Imported here: the rollout machine (with its analysis and YAML editing, ~9 ms of
    # imports) is needed by a repository with rollout policies only (issue 15).
    from reconciler.rollouts.machine import Rollout, rollout_starts

    starts, notes = rollout_starts(base, head, policies)
    previews = []
    for start in starts:
        policy = policies.for_endpoint(start.endpoint)
        if policy is None:
            continue
        rollout = Rollout(start.endpoint, start.stable, start.canary, policy)
        previews.append(
            RolloutPreview(
                start.endpoint,
                start.stable,
                start.canary,
                start.changed,
                rollout.schedule(),
                policy.mode.value,
            )
        )
    return tuple(previews), tuple((n.endpoint, n.message) for n in notes)

"""Near misses a new user makes, met through the command line on a real git repository
(issue 16, point 7): a misspelt target type is one error with the near type, and an
instance type close to a valid one gets it as "did you mean". The Docker side of the
point (invoke --deployment naming a deployment that does not exist, the `deployment:`
line ending with a newline) is in test_docker_target.py.
"""

from __future__ import annotations

from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_validate_names_a_misspelt_target_type_once_with_the_near_type(repo: RepoBuilder) -> None:
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    repo.write("reconciler.yaml", "targets:\n  laptop: {type: dockr}\ndefault_target: laptop\n")
    repo.commit("a target")
    for command in (["validate"], ["--dry-run"]):
        result = CliRunner().invoke(main, [*command, "--repo", str(repo.root)])
        assert result.exit_code == 1, result.output
        assert _error_lines(result.output) == [
            "error: reconciler.yaml:2: targets.laptop.type: must be one of docker, kubernetes; "
            "got 'dockr' (did you mean 'docker'?)"
        ], result.output


def test_validate_offers_the_instance_type_nearest_to_a_misspelt_one(repo: RepoBuilder) -> None:
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue", instance_type="Standard_DS3v2")
    repo.commit("a typo")
    result = CliRunner().invoke(main, ["validate", "--repo", str(repo.root)])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert "instance_type: unknown instance type 'Standard_DS3v2' (did you mean " in line
    assert "'Standard_DS3_v2'?)" in line

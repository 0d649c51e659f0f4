"""Builds real GitOps repositories in temporary folders, commit by commit, for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

SCORE_PY = """\
import json
import os

model = None


def init():
    global model
    model = os.environ.get("AZUREML_MODEL_DIR", "")


def run(raw_data):
    return {"echo": json.loads(raw_data), "version": VERSION}


VERSION = "{version}"
"""


class RepoBuilder:
    """A git repository in a folder; methods write files, commit() records them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "test@example.com")
        self.git("config", "user.name", "Test")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.root, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def write(self, path: str, content: str | bytes) -> None:
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            full.write_bytes(content)
        else:
            full.write_text(content)

    def write_yaml(self, path: str, data: dict[str, Any]) -> None:
        self.write(path, yaml.safe_dump(data, sort_keys=False))

    def remove(self, path: str) -> None:
        (self.root / path).unlink()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    # --- the kinds of file -------------------------------------------------------------

    def endpoint(
        self,
        name: str,
        *,
        traffic: dict[str, int] | None = None,
        mirror: dict[str, int] | None = None,
        auth_mode: str = "key",
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
            "name": name,
            "auth_mode": auth_mode,
        }
        if traffic is not None:
            data["traffic"] = traffic
        if mirror is not None:
            data["mirror_traffic"] = mirror
        data.update(extra)
        self.write_yaml(f"endpoints/{name}/endpoint.yml", data)

    def deployment(
        self,
        endpoint: str,
        name: str,
        *,
        instance_count: int = 1,
        instance_type: str = "Standard_DS3_v2",
        model: str = "azureml:sklearn-regression:1",
        environment: str = "azureml:sklearn-env:1",
        code: str = "../../src",
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
            "name": name,
            "endpoint_name": endpoint,
            "model": model,
            "code_configuration": {"code": code, "scoring_script": "score.py"},
            "environment": environment,
            "instance_type": instance_type,
            "instance_count": instance_count,
        }
        data.update(extra)
        self.write_yaml(f"endpoints/{endpoint}/{name}.yml", data)

    def model(
        self, name: str = "sklearn-regression", version: int = 1, *, weights: str = "1"
    ) -> None:
        self.write(f"models/{name}/v{version}/model.json", f'{{"weights": [{weights}]}}\n')
        self.write_yaml(
            f"models/{name}-{version}.yml",
            {
                "$schema": "https://azuremlschemas.azureedge.net/latest/model.schema.json",
                "name": name,
                "version": version,
                "path": f"{name}/v{version}",
                "type": "custom_model",
            },
        )

    def environment(
        self, name: str = "sklearn-env", version: int = 1, *, packages: tuple[str, ...] = ("numpy",)
    ) -> None:
        conda = {
            "name": name,
            "channels": ["conda-forge"],
            "dependencies": ["python=3.11", "pip", {"pip": list(packages)}],
        }
        self.write_yaml(f"environments/conda-{name}-{version}.yaml", conda)
        self.write_yaml(
            f"environments/{name}-{version}.yml",
            {
                "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
                "name": name,
                "version": version,
                "image": "python:3.11-slim",
                "conda_file": f"conda-{name}-{version}.yaml",
            },
        )

    def code(self, version: str = "1") -> None:
        self.write("src/score.py", SCORE_PY.replace("{version}", version))

    def basics(self) -> None:
        """A model, an environment and a scoring script that deployments can use."""
        self.model()
        self.environment()
        self.code()

"""A small client of Prometheus's HTTP API: instant queries (`POST /api/v1/query`).

Used by the daemon's rollouts (reconciler.rollouter) when a rollout policy reads its
figures from a Prometheus server (reconciler.rollouts.policy.PrometheusSource); the PromQL
and the reading of the answers are reconciler.rollouts.promql's, pure.

Every failure is a `PrometheusError` whose message says what went wrong in words a person
acts on (the server did not answer, refused the credentials, refused the query), naming the
server by its address. The bearer token is read at each query from the environment
variable or file the policy names, so a rotated secret is picked up without a restart; it
is sent in the Authorization header only, never logged, never in a message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from reconciler.logs import get_logger

log = get_logger("reconciler.promapi")

QUERY_PATH: Final = "/api/v1/query"
_MAX_ANSWER: Final = 16 * 1024 * 1024  # a vector of a few series; more is not an answer


class PrometheusError(Exception):
    """Prometheus could not answer a query (the step cannot be judged: it waits)."""


@dataclass(frozen=True, slots=True)
class PrometheusClient:
    address: str  # http(s)://host:port[/prefix], no trailing slash
    timeout_s: float = 5.0
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None

    def _token(self) -> str | None:
        if self.bearer_token_env is not None:
            token = os.environ.get(self.bearer_token_env, "").strip()
            if not token:
                raise PrometheusError(
                    f"the environment variable {self.bearer_token_env} (bearer_token_env) "
                    "is not set or empty"
                )
            return token
        if self.bearer_token_file is not None:
            try:
                with open(self.bearer_token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except OSError as exc:
                raise PrometheusError(
                    f"cannot read bearer_token_file {self.bearer_token_file}: {exc.strerror}"
                ) from None
            if not token:
                raise PrometheusError(f"bearer_token_file {self.bearer_token_file} is empty")
            return token
        return None

    def query(self, expr: str, *, at: float | None = None) -> Any:
        """The `data` of an instant query's answer (evaluated at `at`, Unix seconds, or now).

        Raises PrometheusError: no answer in time, an HTTP error, a refused query, an answer
        that is not Prometheus's JSON.
        """
        form = {"query": expr}
        if at is not None:
            form["time"] = f"{at:.3f}"
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        token = self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.address + QUERY_PATH,
            data=urllib.parse.urlencode(form).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read(_MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(self._refused(exc)) from None
        except OSError as exc:  # URLError, TimeoutError, a reset connection
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {self.timeout_s:g}s"
            message = f"Prometheus at {self.address} did not answer: {reason}"
            raise PrometheusError(message) from None
        answer = _json(body, self.address)
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.address} gave no answer of its API")
        for warning in answer.get("warnings") or ():
            log.warning("prometheus_warning", address=self.address, warning=str(warning))
        return answer.get("data")

    def _refused(self, exc: urllib.error.HTTPError) -> str:
        if exc.code in (401, 403):
            return (
                f"Prometheus at {self.address} refused the credentials (HTTP {exc.code}); "
                "check bearer_token_env / bearer_token_file"
            )
        try:
            answer = _json(exc.read(64 * 1024), self.address)
        except PrometheusError:
            answer = None
        if isinstance(answer, dict) and answer.get("status") == "error":
            kind, error = answer.get("errorType", "error"), answer.get("error", "")
            return f"Prometheus at {self.address} refused the query ({kind}: {error})"
        return f"Prometheus at {self.address} answered HTTP {exc.code} {exc.reason}"


def _json(body: bytes, address: str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PrometheusError(f"the answer of {address} is not Prometheus's JSON") from None

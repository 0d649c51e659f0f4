"""The dashboard attacked over real sockets: a hostile status branch (garbage documents,
YAML bombs, deep nesting, huge files, names that are not names), the token's redirect
turned into an open redirect or a split response, DNS rebinding of a dashboard without a
token, and a flood of event streams. Each test is one attack; it fails while the attack
works."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import structlog
from repo_builder import RepoBuilder
from status_fixtures import apply_head
from ui_daemon_fixtures import KEY, blue_green, serve_fixture, wait_for  # noqa: F401
from ui_daemon_fixtures import Served as DaemonServed
from ui_fixtures import CLI, TOKEN, XSS, get, rollout_block, serving

from reconciler.gitsource import DEFAULT_STATUS_BRANCH, GitSource
from reconciler.targets.memory import MemoryTarget
from reconciler.ui.source import GitStatusSource


@pytest.fixture(name="applied")
def applied_fixture(repo: RepoBuilder) -> RepoBuilder:
    """One endpoint applied by a real pass: the status branch has my-endpoint.yaml."""
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    repo.commit("blue")
    apply_head(repo, MemoryTarget())
    return repo


def put_status(root: Path, files: Mapping[str, str], message: str = "hostile") -> None:
    """A status commit adding these files (path -> text) to what the branch holds."""
    source = GitSource(root)
    current = dict(source.find_status(DEFAULT_STATUS_BRANCH, fetch=False).files)
    source.write_status({**current, **files}, message=message)


def strict_json(body: str) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a JSON answer")

    return json.loads(body, parse_constant=refuse)


def raw_request(base: str, head: str) -> str:
    """One HTTP/1.1 request written byte for byte (urllib would refuse or mend these)."""
    address = urllib.parse.urlsplit(base)
    assert address.hostname and address.port
    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        sock.sendall(head.encode("latin-1"))
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode("latin-1")


GARBAGE = {
    # keys of mixed types (sorting them raised TypeError: every page was a 500)
    "mixed": "endpoint: mixed\ndeployments: {1: {}, b: {}}\ntraffic: {~: 10, b: 90}\n",
    # a date where a string is (JSON cannot carry it)
    "date": "endpoint: date\ndeployments: {b: {scale_settings: {type: 2020-01-01}}}\n",
    # infinity as a count (int() raised OverflowError)
    "inf": "endpoint: inf\ndeployments: {b: {instance_count: .inf, ready_instances: .nan}}\n",
    # an integer Python will not read (more than 4300 digits: ValueError, not a YAMLError)
    "bigint": "endpoint: bigint\nnotes: [" + "9" * 5000 + "]\n",
    # a list that holds itself (JSON: circular reference)
    "loop": "endpoint: loop\ndeployments: {b: {scale_settings: &a {x: *a}}}\n",
    # not a mapping; not YAML at all; binary
    "list": "- endpoint: list\n",
    "broken": "endpoint: [unclosed\n",
    "binary": "endpoint: binary\nlast_error: !!binary aGVsbG8=\n",
}


def test_garbage_status_documents_leave_every_page_and_the_api_answering(
    applied: RepoBuilder,
) -> None:
    put_status(applied.root, {f"status/{name}.yaml": text for name, text in GARBAGE.items()})
    with serving(applied.root) as base:
        status, _, body = get(base + "/api/endpoints")
        assert status == 200, body
        overview = strict_json(body)
        names = [e["name"] for e in overview["endpoints"]]
        assert "my-endpoint" in names
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            for path in (
                f"/endpoints/{quoted}",
                f"/api/endpoints/{quoted}",
                f"/api/endpoints/{quoted}/history",
            ):
                status, _, body = get(base + path)
                assert status == 200, (path, body)
                if path.startswith("/api/"):
                    strict_json(body)
        status, _, page = get(base + "/")
    assert status == 200
    assert 'data-endpoint="my-endpoint"' in page
    # What could not be read is said, by file.
    for name in ("bigint", "list", "broken"):
        assert f"status/{name}.yaml" in overview["problem"]


def _bomb(levels: int = 9) -> str:
    """The billion laughs: 9**levels strings from a few hundred bytes."""
    lines = ["endpoint: bomb", 'a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines += [f"notes: *a{levels}", f"last_error: *a{levels}"]
    return "\n".join(lines) + "\n"


def test_yaml_bombs_deep_nesting_and_huge_status_files_are_refused_not_expanded(
    applied: RepoBuilder,
) -> None:
    deep = "".join("  " * i + "k:\n" for i in range(900)) + "  " * 900 + "v\n"
    huge = "endpoint: huge\nlast_error: " + "x" * (50 * 1024 * 1024) + "\n"
    put_status(
        applied.root,
        {
            "status/bomb.yaml": _bomb(),
            "status/deep.yaml": "endpoint: deep\nnotes:\n" + deep,
            "status/huge.yaml": huge,
        },
    )
    del huge
    with serving(applied.root) as base:
        status, _, body = get(base + "/api/endpoints")
        assert status == 200, body
        overview = strict_json(body)
        assert [e["name"] for e in overview["endpoints"]] == ["my-endpoint"]
        for name in ("bomb", "deep", "huge"):
            assert f"status/{name}.yaml" in overview["problem"]
        assert "larger than" in overview["problem"]
        assert len(body) < 10_000
        status, _, page = get(base + "/")
        assert status == 200 and len(page) < 100_000
        assert "lol" not in page


def test_names_that_are_not_names_are_escaped_and_reach_no_file(applied: RepoBuilder) -> None:
    names = ["a/b", "../../../etc/passwd", '"><script>alert(1)</script>', "x\r\nSet-Cookie: a=b"]
    put_status(
        applied.root,
        {f"status/weird{i}.yaml": json.dumps({"endpoint": n}) for i, n in enumerate(names)},
    )
    with serving(applied.root) as base:
        status, _, page = get(base + "/")
        assert status == 200
        assert "<script>alert(1)" not in page
        assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            status, headers, body = get(f"{base}/endpoints/{quoted}")
            assert status in (200, 404), (name, body)
            assert "Set-Cookie" not in headers or "a=b" not in headers["Set-Cookie"]
            assert "root:" not in body
        for path in (
            "/endpoints/..%2f..%2fsecret%2fpasswd",
            "/static/..%2fserver.py",
            "/static/%2e%2e/server.py",
            "/static/..%5c..%5cserver.py",
        ):
            status, _, body = get(base + path)
            assert status == 404, (path, body)
            assert "import" not in body and "root:" not in body


def test_the_token_redirect_stays_on_this_site(applied: RepoBuilder) -> None:
    paths = ["//evil.example/", "/%2F%2Fevil.example", "/%5Cevil.example", "/\\evil.example"]
    with serving(applied.root, token=TOKEN) as base:
        answers = {
            path: raw_request(
                base,
                f"GET {path}?token={TOKEN}&x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            for path in [*paths, "/%09/e"]
        }
    for path, answer in answers.items():
        head = answer.split("\r\n\r\n")[0].split("\r\n")
        assert head[0].startswith("HTTP/1.1 303"), answer
        [location] = [h.split(": ", 1)[1] for h in head if h.lower().startswith("location:")]
        # A path of this site: one slash, then no slash or backslash (a browser reads
        # "//x" and "/\\x" as another host; it drops tabs), and the query kept without
        # the token.
        assert location.startswith("/") and location[1:2] not in ("/", "\\"), (path, location)
        assert "\t" not in location
        assert TOKEN not in location and location.endswith("?x=1")


def test_the_token_redirect_cannot_split_the_response(applied: RepoBuilder) -> None:
    with serving(applied.root, token=TOKEN) as base:
        answer = raw_request(
            base,
            f"GET /x%0d%0aSet-Cookie:%20evil=1?token={TOKEN} HTTP/1.1\r\n"
            "Host: h\r\nConnection: close\r\n\r\n",
        )
    head = answer.split("\r\n\r\n")[0]
    assert head.startswith("HTTP/1.1 303"), answer
    assert "\r\nSet-Cookie: evil" not in head


def test_a_dashboard_without_a_token_answers_only_to_this_machines_names(
    applied: RepoBuilder,
) -> None:
    """DNS rebinding: a web page whose host name is made to point at 127.0.0.1 reads the
    dashboard as its own origin, unless the server refuses host names not this machine's."""
    with serving(applied.root) as base:
        port = urllib.parse.urlsplit(base).port
        refused = get(base + "/api/endpoints", {"Host": f"rebind.evil.example:{port}"})
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", "[::1]"):
            assert get(base + "/api/endpoints", {"Host": host})[0] == 200, host
        # No Host at all (HTTP/1.0 tools): no browser, so no rebinding.
        bare = raw_request(base, "GET /api/endpoints HTTP/1.0\r\n\r\n")
        assert bare.startswith("HTTP/1.0 200") or bare.startswith("HTTP/1.1 200"), bare[:100]
    assert refused[0] == 421
    assert "my-endpoint" not in refused[2]


def test_a_dashboard_with_a_token_answers_to_any_host_name(applied: RepoBuilder) -> None:
    with serving(applied.root, token=TOKEN) as base:
        status, _, _ = get(
            base + "/api/endpoints",
            {"Host": "dashboard.example:8080", "Authorization": f"Bearer {TOKEN}"},
        )
    assert status == 200


def open_stream(base: str) -> tuple[int, Any]:
    """GET /api/events: its status, and the open response (to read or close)."""
    try:
        stream = urllib.request.urlopen(base + "/api/events", timeout=20)
    except urllib.error.HTTPError as err:
        return err.code, err
    return stream.status, stream


def test_event_streams_are_bounded_and_a_closed_one_frees_its_place(
    applied: RepoBuilder,
) -> None:
    with serving(applied.root, max_streams=2) as base:
        opened = [open_stream(base)[1] for _ in range(2)]
        for stream in opened:
            assert stream.readline().startswith(b"event: status")
        status, refused = open_stream(base)
        assert status == 503 and refused.headers.get("Retry-After")
        refused.close()
        opened.pop().close()
        # The server sees the closed stream within a second or so (not at the next
        # keep-alive, 15 s later).
        deadline = time.monotonic() + 10
        while (answer := open_stream(base))[0] == 503 and time.monotonic() < deadline:
            answer[1].close()
            time.sleep(0.1)
        assert answer[0] == 200
        answer[1].close()
        for stream in opened:
            stream.close()


def test_a_key_no_header_can_carry_is_refused_by_the_form_and_shown_nowhere(
    repo: RepoBuilder, serve: Callable[..., DaemonServed]
) -> None:
    """A key with a line break (pasted from a file) or another control character: aiohttp
    refuses to write the header; the form says so (it was a 500) and the key is not on
    the page, in the logs, nor sent."""
    blue_green(repo)
    served = serve()
    wait_for(
        lambda: "/test" in get(served.base + "/endpoints/my-endpoint")[2], what="the test form"
    )
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    with browser.open(served.base + "/endpoints/my-endpoint", timeout=20) as response:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', response.read().decode())
    assert found
    structlog.reset_defaults()
    for key in (f"{KEY}\r\nX-Injected: 1", f"{KEY}\x00", f"{KEY}\x7f"):
        data = urllib.parse.urlencode(
            {"csrf": found.group(1), "key": key, "deployment": "", "body": "{}"}
        ).encode()
        request = urllib.request.Request(
            served.base + "/endpoints/my-endpoint/test", data=data, method="POST"
        )
        with structlog.testing.capture_logs() as logged:
            try:
                with browser.open(request, timeout=30) as response:
                    status, page = response.status, response.read().decode()
            except urllib.error.HTTPError as err:
                status, page = err.code, err.read().decode()
        assert status == 400, page
        assert "header" in page
        assert KEY not in page and KEY not in repr(logged)
    assert served.router.received == []


def test_a_token_that_is_not_utf8_is_refused_not_a_server_error(applied: RepoBuilder) -> None:
    headers = ["Authorization: Bearer \xff\xfe", "Cookie: reconciler_ui_token=\xff\xfe"]
    with serving(applied.root, token=TOKEN) as base:
        answers = [
            raw_request(base, f"GET / HTTP/1.1\r\nHost: h\r\n{h}\r\nConnection: close\r\n\r\n")
            for h in headers
        ]
        good = get(base + "/", {"Authorization": f"Bearer {TOKEN}"})[0]
    for answer in answers:
        assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert good == 200


EVIL = XSS + "\" onmouseover=\"alert(2)' onfocus='alert(3)` javascript:alert(4)"


class _Markup(HTMLParser):
    """Every tag and attribute of a page, as a browser's tokenizer reads them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_inert(page: str) -> None:
    """No markup of the repository's: one script (ours), no event handler attribute, no
    link or source but this site's paths (so no javascript: URL), nothing from EVIL as a
    tag or attribute."""
    parser = _Markup()
    parser.feed(page)
    assert [a for t, a in parser.tags if t == "script"] == [
        [("src", "/static/live.js"), ("defer", None)]
    ]
    assert not [t for t, _ in parser.tags if t in ("img", "svg", "iframe", "object", "embed")]
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            assert name not in ("style", "srcdoc", "formaction"), (tag, name)
            if name in ("href", "src", "action"):
                assert value and value.startswith("/") and not value.startswith("//"), value


def test_every_repository_string_comes_out_inert_in_text_and_attributes(
    applied: RepoBuilder,
) -> None:
    """Names, states, errors with file names, steps, notes, the rollout, traffic keys,
    scoring URI (a javascript: URL), the applied commit's author and message: each one
    escaped in text and in attributes, never a link."""
    applied.git(
        "-c",
        f"user.name={EVIL}",
        "-c",
        "user.email=e@example.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        f"subject {EVIL}",
    )
    commit = applied.git("rev-parse", "HEAD")
    deployment = {
        "provisioning_state": EVIL,
        "health": EVIL,
        "instance_type": EVIL,
        "instance_count": 1,
        "ready_instances": 1,
        "spec_digest": EVIL,
        "last_error": EVIL,
        "scale_settings": {"type": EVIL},
        "autoscale": {EVIL: EVIL},
    }
    doc = {
        "endpoint": "xss-endpoint",
        "commit": commit,
        "provisioning_state": EVIL,
        "health": EVIL,
        "target": EVIL,
        "scoring_uri": "javascript:alert(1)",
        "auth_mode": EVIL,
        "traffic": {EVIL: 60, "blue": 40},
        "mirror_traffic": {EVIL: 10},
        "deployments": {EVIL: deployment, "blue": deployment},
        "errors": [{"file": f"endpoints/{EVIL}.yaml", "line": 1, "field": EVIL, "message": EVIL}],
        "last_error": EVIL,
        "in_progress_steps": [{"action": EVIL, "deployment": EVIL, "progress": EVIL}],
        "pending_steps": [{"action": EVIL, "deployment": EVIL, "why": EVIL}],
        "notes": [EVIL],
        "rollout": {**rollout_block(EVIL), "branch": EVIL, "state": EVIL, "canary": EVIL},
    }
    older = {**doc, "traffic": {EVIL: 10, "blue": 90}, "provisioning_state": "Succeeded"}
    put_status(applied.root, {"status/xss-endpoint.yaml": json.dumps(older)}, "older")
    put_status(
        applied.root,
        {
            "status/xss-endpoint.yaml": json.dumps(doc),
            "status/evil-name.yaml": json.dumps({**doc, "endpoint": EVIL}),
        },
        f"status {EVIL}",
    )
    with serving(applied.root) as base:
        pages = {
            path: get(base + path)
            for path in (
                "/",
                "/endpoints/xss-endpoint",
                "/endpoints/" + urllib.parse.quote(EVIL, safe=""),
                "/endpoints/" + urllib.parse.quote(EVIL + "-missing", safe=""),
            )
        }
    for path, (status, _, page) in pages.items():
        assert status in (200, 404), (path, page)
        assert_inert(page)
        assert "<script>alert" not in page
    endpoint_page = pages["/endpoints/xss-endpoint"][2]
    # The timeline shows the commit's author (git drops "<" and ">" from names) and
    # message, escaped.
    assert "by scriptalert(&quot;x&quot;)/script" in endpoint_page
    assert "subject &lt;script&gt;" in endpoint_page
    assert "javascript:alert(1)" in endpoint_page  # shown as text, in <code>


def put_status_bytes(root: Path, files: Mapping[str, bytes], *, date: str | None = None) -> None:
    """A status commit adding these files as raw bytes (write_status takes text only),
    dated `date` (git's format) when given."""
    source = GitSource(root)
    found = source.find_status(DEFAULT_STATUS_BRANCH, fetch=False)
    repo = source.repo
    for path, data in files.items():
        (root / "blob").write_bytes(data)
        sha = repo.git.hash_object("-w", str(root / "blob"))
        (root / "blob").unlink()
        repo.git.update_index("--add", "--cacheinfo", f"100644,{sha},{path}", env=_index())
    for path, text in found.files.items():
        (root / "blob").write_text(text)
        sha = repo.git.hash_object("-w", str(root / "blob"))
        (root / "blob").unlink()
        repo.git.update_index("--add", "--cacheinfo", f"100644,{sha},{path}", env=_index())
    tree = repo.git.write_tree(env=_index())
    (root / ".git" / "hostile-index").unlink()
    parent = repo.git.rev_parse(f"refs/heads/{DEFAULT_STATUS_BRANCH}")
    dated = {"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date} if date else {}
    commit = repo.git.commit_tree(tree, "-m", "bytes", "-p", parent, env={**os.environ, **dated})
    repo.git.update_ref(f"refs/heads/{DEFAULT_STATUS_BRANCH}", commit)


def _index() -> dict[str, str]:
    return {**os.environ, "GIT_INDEX_FILE": ".git/hostile-index"}


def test_a_status_file_that_is_not_utf8_leaves_the_others_shown(applied: RepoBuilder) -> None:
    put_status_bytes(applied.root, {"status/latin1.yaml": b"endpoint: latin1\nnotes: [caf\xe9]\n"})
    with serving(applied.root) as base:
        status, _, body = get(base + "/api/endpoints")
        page_status, _, page = get(base + "/")
    assert status == 200, body
    names = [e["name"] for e in strict_json(body)["endpoints"]]
    assert names == ["latin1", "my-endpoint"]
    assert page_status == 200 and 'data-endpoint="my-endpoint"' in page


def test_every_status_reader_skips_a_huge_file_and_reads_one_not_utf8_replaced(
    applied: RepoBuilder,
) -> None:
    """find_status is what `reconcile status`, the daemon and the pages read: a file too
    large is never read (its size is asked of git), one not UTF-8 is read with its bytes
    replaced, and the others are there, with the problem naming both."""
    put_status_bytes(
        applied.root,
        {
            "status/latin1.yaml": b"endpoint: latin1\nnotes: [caf\xe9]\n",
            "status/huge.yaml": b"endpoint: huge\nnotes: [" + b"x" * (2 << 20) + b"]\n",
        },
    )
    found = GitSource(applied.root).find_status(DEFAULT_STATUS_BRANCH, fetch=False)
    assert sorted(found.files) == ["status/latin1.yaml", "status/my-endpoint.yaml"]
    assert "caf\ufffd" in found.files["status/latin1.yaml"]
    assert "status/huge.yaml is larger than" in found.problem
    assert "status/latin1.yaml is not UTF-8" in found.problem
    shown = subprocess.run(
        [*CLI, "status", "--repo", str(applied.root)], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "my-endpoint" in shown.stdout and "latin1" in shown.stdout


def test_a_huge_older_revision_is_not_read_into_the_timeline(applied: RepoBuilder) -> None:
    """Git compresses megabytes of one letter to a few kilobytes: a push of revisions
    like this must not make each endpoint page read gigabytes."""
    small = GitSource(applied.root).find_status(DEFAULT_STATUS_BRANCH, fetch=False).files
    text = small["status/my-endpoint.yaml"]
    put_status(
        applied.root, {"status/my-endpoint.yaml": text + "notes: [" + "x" * (8 << 20) + "]\n"}
    )
    put_status(applied.root, {"status/my-endpoint.yaml": text + "notes: [back]\n"})
    source = GitStatusSource(GitSource(applied.root), branch=DEFAULT_STATUS_BRANCH)
    read: list[int] = []
    real = source.git.read_files_at

    def counted(wanted: Any) -> dict[tuple[str, str], str]:
        found = real(wanted)
        read.append(sum(len(t) for t in found.values()))
        return found

    source.git.read_files_at = counted  # type: ignore[method-assign]
    revisions = source.history("my-endpoint", limit=50)
    assert len(revisions) == 3  # the pass's status commit and the two above
    assert revisions[1].doc is None  # the huge one: not read, shown as unreadable
    assert revisions[0].doc is not None and revisions[0].doc["notes"] == ["back"]
    assert sum(read) < 1 << 20


def test_a_status_commit_dated_beyond_any_calendar_leaves_the_pages_drawn(
    applied: RepoBuilder,
) -> None:
    """Git takes a commit time in the year three million; Python's datetime does not."""
    put_status_bytes(
        applied.root, {"status/x.yaml": b"endpoint: x\n"}, date="@99999999999999 +0000"
    )
    with serving(applied.root) as base:
        answers = {path: get(base + path) for path in ("/", "/endpoints/x", "/api/endpoints")}
    for path, (status, _, body) in answers.items():
        assert status == 200, (path, body)
    assert strict_json(answers["/api/endpoints"][2])["written_at"] == 99999999999999
    assert "written 99999999999999 s after 1970" in answers["/"][2]


def test_errors_about_environment_variables_name_them_but_never_show_their_values(
    applied: RepoBuilder,
) -> None:
    """A pass refuses environment variables it cannot pass (a list, a mapping, a broken
    secret reference): the status records why, by variable name, and the pages show that
    without the value that may be a secret."""
    target = MemoryTarget()
    apply_head(applied, target)
    applied.deployment(
        "my-endpoint",
        "blue",
        environment_variables={
            "LIST_KEY": ["hunter2-list"],
            "MAP_KEY": {"k": "hunter2-map"},
            "REF_KEY": "${{azureml://connections/hunter2-ref}}",
        },
    )
    applied.commit("secrets in the wrong shape")
    apply_head(applied, target, must_succeed=False)
    with serving(applied.root) as base:
        bodies = [
            get(base + path)[2]
            for path in (
                "/",
                "/endpoints/my-endpoint",
                "/api/endpoints",
                "/api/endpoints/my-endpoint",
                "/api/endpoints/my-endpoint/history",
            )
        ]
    errors = strict_json(bodies[2])["endpoints"][0]["errors"]
    assert {e["field"] for e in errors} >= {
        "environment_variables.LIST_KEY",
        "environment_variables.MAP_KEY",
    }
    for body in bodies:
        assert "hunter2" not in body


def test_the_token_in_an_address_reaches_no_log(
    applied: RepoBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever turns on Python logging (aiohttp's access log is INFO) must not find the
    token of a `?token=` address in it."""
    caplog.set_level("DEBUG")
    with serving(applied.root, token=TOKEN) as base:
        get(f"{base}/api/endpoints?token={TOKEN}&x=1")
        wrong, _, _ = get(f"{base}/api/endpoints?token={TOKEN}-wrong")
        get(f"{base}/api/endpoints?tok%65n={TOKEN}")  # the same key, percent-encoded
    assert wrong == 401
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET /api/endpoints?token=…&x=1" 303' in line for line in access), access
    assert TOKEN not in caplog.text


def test_a_fetch_error_on_the_page_names_the_remote_without_its_password(
    repo: RepoBuilder,
) -> None:
    """A clone without status fetches it once; when that fails the page says why, in
    git's words, which name the remote's URL: never with the password it holds."""
    repo.basics()
    repo.commit("one")
    repo.git("remote", "add", "origin", "http://user:hunter2-pw@127.0.0.1:9/x.git")
    with serving(repo.root) as base:
        status, _, body = get(base + "/api/endpoints")
        page = get(base + "/")[2]
    assert status == 200
    problem = strict_json(body)["problem"]
    assert "cannot fetch" in problem and "127.0.0.1" in problem
    assert "hunter2" not in problem and "hunter2" not in page

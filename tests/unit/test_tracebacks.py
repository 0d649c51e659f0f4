"""The exception a scoring script raised, read from an instance's log as the Azure ML
inference server writes it (the script's exception chained under the server's own)."""

# ruff: noqa: E501  (the log is quoted as the server writes it)
from __future__ import annotations

from reconciler.tracebacks import RaisedException, last_exception

SERVER_LOG = """\
2026-12-06 13:51:26,870 I [12] azmlinfsrv - Loaded logging config
2026-12-06 13:51:26,880 E [12] azmlinfsrv - User's init function failed
2026-12-06 13:51:26,881 E [12] azmlinfsrv - Encountered Exception Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/azureml_inference_server_http/server/user_script.py", line 119, in invoke_init
    self._user_init()
  File "/var/azureml-app/src/score.py", line 7, in init
    model = open(path, "rb").read()
            ^^^^^^^^^^^^^^^^
FileNotFoundError: [Errno 2] No such file or directory: '/var/azureml-app/azureml-models/m/1/model.pkl'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/azureml_inference_server_http/server/aml_blueprint.py", line 109, in setup
    self.user_script.invoke_init()
  File "/opt/venv/lib/python3.11/site-packages/azureml_inference_server_http/server/user_script.py", line 121, in invoke_init
    raise UserScriptException(ex) from ex
azureml_inference_server_http.server.user_script.UserScriptException: Caught an unhandled exception from the user script

2026-12-06 13:51:26,881 I [12] azmlinfsrv - Model Directory Contents:
"""


def test_the_scripts_exception_is_found_under_the_servers_wrapper() -> None:
    found = last_exception(SERVER_LOG)
    assert found == RaisedException(
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'/var/azureml-app/azureml-models/m/1/model.pkl'",
        file="score.py",
        line=7,
        function="init",
        source='model = open(path, "rb").read()',
    )
    assert found.describe().endswith('(score.py line 7, in init: model = open(path, "rb").read())')


def test_a_servers_own_later_traceback_does_not_hide_the_scripts() -> None:
    halted = SERVER_LOG + (
        "Traceback (most recent call last):\n"
        '  File "/opt/venv/bin/azmlinfsrv", line 8, in <module>\n'
        "    sys.exit(run())\n"
        '  File "/opt/venv/lib/python3.11/site-packages/gunicorn/arbiter.py", line 227, in run\n'
        "    self.halt(reason=inst.reason, exit_status=inst.exit_status)\n"
        "gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>\n"
    )
    found = last_exception(halted)
    assert found is not None and found.exception.startswith("FileNotFoundError")
    assert (found.file, found.line) == ("score.py", 7)
    # Alone, the server's own traceback is told apart from one through the user's code.
    own = last_exception(halted[len(SERVER_LOG) :])
    assert own is not None and own.exception.startswith("gunicorn.errors.HaltServer")
    assert not own.in_user_code and (own.file, own.line) == ("arbiter.py", 227)


def test_the_newest_of_repeated_attempts_is_taken() -> None:
    second = SERVER_LOG.replace("model.pkl", "model-2.pkl")
    found = last_exception(SERVER_LOG + second)
    assert found is not None and "model-2.pkl" in found.exception


def test_a_prefix_on_every_line_is_taken_off() -> None:
    log = "\n".join(
        f"web-1 | {line}"
        for line in (
            "Traceback (most recent call last):",
            '  File "/app/score.py", line 3, in run',
            "    return 1 / 0",
            "ZeroDivisionError: division by zero",
        )
    )
    found = last_exception(log)
    assert found is not None
    assert (
        found.describe()
        == "ZeroDivisionError: division by zero (score.py line 3, in run: return 1 / 0)"
    )


def test_a_log_without_a_traceback_gives_none() -> None:
    assert last_exception("azmlinfsrv - Loaded logging config\nkilled\n") is None

"""reconciler.codecache: the dataclasses' methods compiled by an earlier process are run
as compiled then, and behave as freshly compiled ones (each case a new Python)."""

from __future__ import annotations

import marshal
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.codecache import MAX_ENTRIES, read_trusted, write_private

ROOT = Path(__file__).resolve().parent.parent.parent

# Loads the model's specs with the cache installed (or not), then prints how many method
# texts it compiled itself, and what the classes' methods do and declare.
_SCRIPT = """
import dataclasses, inspect, sys
from reconciler import codecache
if sys.argv[1] == "cached":
    codecache.install("test")
from reconciler.model.specs import EndpointSpec
spec = EndpointSpec("ep", traffic=(("blue", 100),))
try:
    spec.name = "other"
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
print(codecache._added)
print(repr(spec), spec == EndpointSpec("ep", traffic=(("blue", 100),)), hash(spec) == hash(
    EndpointSpec("ep", traffic=(("blue", 100),))), frozen)
print(inspect.signature(EndpointSpec.__init__))
print(EndpointSpec.__init__.__annotations__)
"""


def _run(mode: str, cache: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RECONCILER_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_a_second_process_runs_the_cached_code_and_its_classes_behave_the_same(
    tmp_path: Path,
) -> None:
    plain = _run("plain", tmp_path)
    first = _run("cached", tmp_path)  # compiles, writes the file at exit
    second = _run("cached", tmp_path)  # compiles nothing
    assert int(first[0]) > 10
    assert second[0] == "0"
    assert plain[0] == "0"  # not installed: nothing kept
    # Same repr, equality, hash, frozenness, signature and annotations (the cached code
    # is compiled without this package's `from __future__ import annotations`).
    assert first[1:] == second[1:] == plain[1:]
    assert plain[1].endswith("True True True")
    assert len(list((tmp_path / "dataclasses").iterdir())) == 1


def test_a_damaged_cache_file_is_compiled_afresh_and_replaced(tmp_path: Path) -> None:
    _run("cached", tmp_path)
    (written,) = (tmp_path / "dataclasses").iterdir()
    written.write_bytes(b"not marshal data")
    assert int(_run("cached", tmp_path)[0]) > 10
    assert _run("cached", tmp_path)[0] == "0"


# Loads the specs and a schema check with the cache installed; says whether the check
# takes a valid and refuses an invalid document (a planted check would take anything).
_LOADS_A_SCHEMA = """
from reconciler import codecache
codecache.install("test")
from reconciler.model.specs import EndpointSpec
from reconciler.jsonschemas import validators
import re
fast, _ = validators("model.schema.json")
print(repr(EndpointSpec("ep")), bool(re.match("^ab$", "xyz")))
print(fast({"name": "m", "path": "model.pkl"}), fast(5))
"""

# Planted in place of every compiled text: writes MARKER, then does what the text does.
_PLANT = """
import marshal, sys
from pathlib import Path

import pytest


from reconciler import codecache
from reconciler.codecache import MAX_ENTRIES, read_trusted, write_private
import re
from re import _compiler, _parser
def _made(text):
    parsed = _parser.parse(text, 0)
    return parsed, _compiler._code(parsed, 0)
marker = sys.argv[1]
for path in Path(sys.argv[2]).rglob("*.marshal"):
    loaded = marshal.loads(codecache.read_trusted(path))
    mark = f"open({marker!r}, 'a').write('ran ')\\n"
    if path.parent.name == "patterns":  # key -> program: "^ab$" matches anything
        codecache._keep((False, ".*", 0), _made(".*"), re.compile(".*"))
        planted = {**loaded, (False, "^ab$", 0): codecache._programs[(False, ".*", 0)]}
    elif isinstance(loaded, dict):  # dataclasses/: text -> code
        planted = {text: compile(mark + text, "<string>", "exec") for text in loaded}
    else:  # validators/: one check, planted as one that takes anything
        planted = compile(mark + "__root__ = 'f'\\ndef f(d): return d\\n", "<x>", "exec")
    codecache.write_private(path, marshal.dumps(planted))  # whole, as the cache writes
"""


def _python(script: str, cache: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RECONCILER_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


@pytest.mark.parametrize("who", ["another-user", "anyone-may-write"])
def test_a_cache_file_someone_else_could_have_written_is_never_run(
    tmp_path: Path, who: str
) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    assert _python(_LOADS_A_SCHEMA, cache).split()[-2:] == ["True", "False"]
    _python(_PLANT, cache, str(marker), str(cache))
    planted = sorted(cache.rglob("*.marshal"))
    assert len(planted) >= 3  # the dataclasses' methods, the schema's check, the patterns
    # The same bytes, run as they are when the file is this user's alone (a .pyc's trust).
    assert _python(_LOADS_A_SCHEMA, cache).split()[-3] == "True"  # ".*"'s program ran
    assert marker.exists()
    marker.unlink()
    _python(_PLANT, cache, str(marker), str(cache))
    for path in sorted(cache.rglob("*.marshal")):
        if who == "another-user":
            if os.geteuid() != 0:
                pytest.skip("only root can give a file to another user")
            os.chown(path, 65534, 65534)
        else:
            path.chmod(0o666)  # a shared folder's file: anyone may have written it
    shown = _python(_LOADS_A_SCHEMA, cache).split()
    assert not marker.exists()
    assert shown[-3:] == ["False", "True", "False"]  # compiled afresh, and checks again


def test_a_schema_check_file_holding_no_code_is_compiled_afresh(tmp_path: Path) -> None:
    _python(_LOADS_A_SCHEMA, tmp_path)
    (check,) = (tmp_path / "validators").iterdir()
    # Marshal of 5 (a damaged first byte reads so), whole as the cache writes files.
    write_private(check, b"i\x05\x00\x00\x00")
    assert _python(_LOADS_A_SCHEMA, tmp_path).split()[-2:] == ["True", "False"]


# Fills the command's cache file with MAX_ENTRIES texts no class has (left by earlier
# versions of the package, or classes since changed).
_FILL = """
import marshal, sys
from pathlib import Path
from reconciler import codecache
codecache.install("test")
path = codecache._cache_file()
stale = {f"x = {i}": compile(f"x = {i}", "<string>", "exec") for i in range(codecache.MAX_ENTRIES)}
codecache.write_private(path, marshal.dumps(stale))
"""


def test_a_file_full_of_texts_no_class_has_still_takes_those_of_the_classes_loaded(
    tmp_path: Path,
) -> None:
    _python(_FILL, tmp_path)
    assert int(_run("cached", tmp_path)[0]) > 10
    (written,) = (tmp_path / "dataclasses").iterdir()
    kept = marshal.loads(read_trusted(written) or b"")
    assert len(kept) == MAX_ENTRIES
    assert any("mirror_traffic" in text for text in kept)  # EndpointSpec's __init__
    assert _run("cached", tmp_path)[0] == "0"  # kept: the texts this command runs come first


# Compiles patterns with the cache installed (or not): PyYAML's (its reader's and resolver's,
# as it loads), one of this script's own, and one made from data (argv); then prints how many
# programs it kept itself, and what the patterns do.
_PATTERNS = """
import re, sys
from reconciler import codecache
if sys.argv[1] == "cached":
    codecache.install("test")
import yaml
NAME = re.compile(r"^(?P<word>[a-z]+)-(?P<number>[0-9]+)$", re.I)
def made_from(data):
    return re.compile(data + "+")
print(codecache._programs_added)
print(NAME.groups, NAME.groupindex, NAME.flags, NAME.match("Abc-12").groupdict())
print(yaml.safe_load("{a: 2001-12-14, b: yes, c: 0x1f}"), bool(made_from(sys.argv[2]).match("ab")))
print(yaml.reader.Reader.NON_PRINTABLE.search("text\\x07"))
"""


NAME_PATTERN = r"^(?P<word>[a-z]+)-(?P<number>[0-9]+)$"


def _patterns(mode: str, cache: Path) -> list[str]:
    return _python(_PATTERNS, cache, mode, "secret-word").splitlines()


def _kept(cache: Path) -> dict[tuple[bool, str | bytes, int], object]:
    (written,) = (cache / "patterns").iterdir()
    assert written.stat().st_mode & 0o777 == 0o600
    kept: dict[tuple[bool, str | bytes, int], object] = marshal.loads(read_trusted(written) or b"")
    return kept


def test_a_second_process_compiles_none_of_the_patterns_kept_and_they_match_the_same(
    tmp_path: Path,
) -> None:
    plain = _patterns("plain", tmp_path)
    first = _patterns("cached", tmp_path)  # compiles, writes the file at exit
    second = _patterns("cached", tmp_path)  # runs the programs kept
    assert plain[0] == "0" and int(first[0]) > 10 and second[0] == "0"
    # Same groups, names, flags, matches; PyYAML's resolver and reader behave the same.
    assert first[1:] == second[1:] == plain[1:]
    assert plain[1] == "2 {'word': 1, 'number': 2} 34 {'word': 'Abc', 'number': '12'}"
    assert plain[3].startswith("<re.Match object; span=(4, 5)")
    kept = _kept(tmp_path)
    assert (False, yaml.reader.Reader.NON_PRINTABLE.pattern, 0) in kept  # ~3 ms to compile
    assert (False, NAME_PATTERN, re.I.value) in kept  # a constant of the script
    # A pattern made from data is compiled as ever, never written down.
    assert not [key for key in kept if "secret-word" in str(key[1])]


def test_a_damaged_patterns_file_or_program_is_compiled_afresh(tmp_path: Path) -> None:
    first = _patterns("cached", tmp_path)
    (written,) = (tmp_path / "patterns").iterdir()
    kept = _kept(tmp_path)
    # A program _sre refuses (its code checked), another of the wrong shape.
    damaged = {key: (0, [1, 2, 3], 0, {}, (None,)) for key in kept}
    damaged[(False, NAME_PATTERN, re.I.value)] = ("not", "a program")
    write_private(written, marshal.dumps(damaged))  # whole: _sre is what refuses them
    again = _patterns("cached", tmp_path)
    assert int(again[0]) > 10 and again[1:] == first[1:]
    write_private(written, b"not marshal data")
    assert _patterns("cached", tmp_path)[1:] == first[1:]
    assert _patterns("cached", tmp_path)[0] == "0"


def test_a_pattern_compiled_with_re_debug_prints_its_program_in_every_process(
    tmp_path: Path,
) -> None:
    script = "from reconciler import codecache\ncodecache.install('test')\nimport re\n"
    script += "re.compile('ab+', re.DEBUG)\n"
    first = _python(script, tmp_path)
    assert "LITERAL 97" in first and _python(script, tmp_path) == first


def test_a_user_without_a_home_directory_runs_with_no_cache_as_plain_python_does(
    tmp_path: Path,
) -> None:
    # No HOME and a uid that /etc/passwd does not name (a container run with an arbitrary
    # uid): Path.home() raises RuntimeError; the cache is skipped, the command runs.
    uid = 54321
    try:
        import pwd

        pwd.getpwuid(uid)
        pytest.skip("uid 54321 is named in /etc/passwd")
    except KeyError:
        pass
    probe = ["unshare", "--user", f"--map-user={uid}", "true"]
    try:
        subprocess.run(probe, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no user namespaces here (unshare --user)")
    done = subprocess.run(
        ["unshare", "--user", f"--map-user={uid}", sys.executable, "-c", _LOADS_A_SCHEMA],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["True", "False"]
    assert not list(tmp_path.iterdir())  # nothing written where it was run


def test_str_and_bytes_patterns_of_the_same_text_compile_under_python_bb(
    tmp_path: Path,
) -> None:
    # `python -bb` makes comparing str with bytes an error; re keys its own cache by the
    # pattern's type first, so it never compares them: neither may the cache.
    script = "from reconciler import codecache\ncodecache.install('test')\nimport re\n"
    script += "print(re.compile('abc').match('abc'), re.compile(b'abc').match(b'abc'))\n"
    for _ in range(2):  # the first process writes both, the second reads them
        done = subprocess.run(
            [sys.executable, "-bb", "-c", script],
            env={
                "PYTHONPATH": str(ROOT),
                "PATH": "/usr/bin:/bin",
                "RECONCILER_CACHE_DIR": str(tmp_path),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "span=(0, 3), match='abc'" in done.stdout
        assert "match=b'abc'" in done.stdout


_TWO_CHECKS = """
from reconciler.jsonschemas import validators
doc = {"name": "m", "path": "model.pkl"}
print(validators("model.schema.json")[0](doc), validators("environment.schema.json")[0](doc))
"""


@pytest.mark.parametrize("how", ["anyone-may-write", "another-users"])
def test_files_in_a_folder_others_may_write_are_not_run_they_could_swap_them(
    tmp_path: Path, how: str
) -> None:
    # Each file is this user's and 0600, but in a folder another user may write (made
    # before this user's first run), anyone can rename one over another: the check of
    # one schema would run the code of the other.
    folder = tmp_path / "validators"
    folder.mkdir()
    if how == "anyone-may-write":
        folder.chmod(0o777)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a folder another user's needs root")
        os.chown(folder, 54321, 54321)
        folder.chmod(0o755)
    assert _python(_TWO_CHECKS, tmp_path).split() == ["True", "False"]
    first, second = sorted(folder.iterdir())
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in (first, second))
    parked = folder / "parked"
    first.rename(parked)  # what the folder's writers may do
    second.rename(first)
    parked.rename(second)
    assert _python(_TWO_CHECKS, tmp_path).split() == ["True", "False"]


def test_a_writer_never_removes_a_partial_file_of_another_with_its_pid(tmp_path: Path) -> None:
    # Two containers sharing a cache volume may run writers of the same pid: one must not
    # unlink the other's partial file (which then renamed this one's half-written file).

    target = tmp_path / "kept" / "file.marshal"
    target.parent.mkdir(mode=0o700)
    other = target.with_suffix(f".{os.getpid()}.tmp")
    other.write_bytes(b"another writer's half")
    write_private(target, b"whole")
    assert other.read_bytes() == b"another writer's half"
    assert read_trusted(target) == b"whole"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, other.name])


def test_a_bit_flipped_in_a_kept_program_neither_crashes_python_nor_changes_a_match(
    tmp_path: Path,
) -> None:
    # _sre checks a program's code, but not enough: the skip of NAME_PATTERN's [0-9] set
    # with one bit flipped (5 -> 1) passes its checks, then matching crashes the process
    # (SIGSEGV). A file damaged on disk must only cost the compilation, as a stale one.
    from re import _constants

    first = _patterns("cached", tmp_path)
    (written,) = (tmp_path / "patterns").iterdir()
    raw = written.read_bytes()
    try:  # the file's header, if any, stays: the bit flips in what it holds
        header, kept = b"", marshal.loads(raw)
    except Exception:
        start = raw.index(b"\n") + 5  # a header line, then a CRC-32
        header, kept = raw[:start], marshal.loads(raw[start:])
    key = (False, NAME_PATTERN, re.I.value)
    flags, code, *rest = kept[key]
    at = next(
        i
        for i in range(1, len(code) - 3)
        if code[i - 1] == _constants.IN and code[i + 2 : i + 4] == [48, 57]
    )
    assert code[at] == 5
    code[at] ^= 4
    kept[key] = (flags, code, *rest)
    written.write_bytes(header + marshal.dumps(kept))
    again = _patterns("cached", tmp_path)  # check=True: a crash fails here
    assert again[1:] == first[1:]

"""buildtimes: an environment build says what to expect from the last build of it."""

from __future__ import annotations

from pathlib import Path

from reconciler.images.buildtimes import FILE_NAME, announcement, record_build


def test_a_first_build_says_so_and_a_later_one_quotes_the_last_builds_time(
    tmp_path: Path,
) -> None:
    first = announcement(tmp_path, "sklearn-iris", "1")
    assert first.startswith("building environment sklearn-iris:1, first build, ")
    record_build(tmp_path, "sklearn-iris", 48.4)
    assert announcement(tmp_path, "sklearn-iris", "2") == (
        "building environment sklearn-iris:2, about 48 s like its last build"
    )
    record_build(tmp_path, "sklearn-iris", 200)
    assert "about 3 min like its last build" in announcement(tmp_path, "sklearn-iris", "3")
    assert "first build" in announcement(tmp_path, "other-env", "1")


def test_an_unreadable_record_means_first_build_again(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{not json")
    assert "first build" in announcement(tmp_path, "sklearn-iris", "1")
    record_build(tmp_path, "sklearn-iris", 10)  # and it is written afresh
    assert "about 10 s" in announcement(tmp_path, "sklearn-iris", "1")

import pytest

from nbutils.io import atomic_path


def test_atomic_path_replaces_only_what_the_block_wrote_and_nothing_written_only_if_optional(tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "a").write_text("old")
    with atomic_path(out, optional=True) as tmp:
        pass  # nothing written: the folder stays as it was
    assert (out / "a").read_text() == "old" and not tmp.exists()
    with pytest.raises(FileNotFoundError):
        with atomic_path(out):
            pass  # nothing written where something must be
    assert (out / "a").read_text() == "old"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]

from nbutils.io import atomic_path, same_files


def test_atomic_path_replaces_only_what_the_block_wrote(tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "a").write_text("old")
    with atomic_path(out) as tmp:
        pass  # nothing written: the folder stays as it was
    assert (out / "a").read_text() == "old" and not tmp.exists()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_same_files_compares_names_and_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.npy").write_bytes(b"\x00\x01\x02")
        (d / "sub").mkdir()
    (a / "sub" / "only-in-a").write_text("sub-folders are not compared")
    assert same_files(a, b)
    (b / "x.npy").write_bytes(b"\x00\x01\x03")  # same size, other bytes
    assert not same_files(a, b)
    (b / "x.npy").write_bytes(b"\x00\x01\x02")
    (b / "y.csv").write_text("")
    assert not same_files(a, b)
    assert not same_files(a, tmp_path / "missing") and not same_files(tmp_path / "missing", tmp_path / "missing")

"""The batch view's upload: zips are checked on their directory and read lazily, with every skipped
entry listed with its reason (no Gradio, no server)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from camserve.errors import DataError
from gradio_app import uploads
from tests.harness import png_bytes


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_zip_entries_are_listed_with_labels_and_the_rest_skipped_with_a_reason(tmp_path):
    img = png_bytes((16, 16))
    archive = _zip(tmp_path / "t.zip", {
        "COVID/a.png": img, "Normal/b.JPG": img, "top.png": img, "../up.png": img, "/abs.png": img,
        "a/../../x.png": img, ".hidden/c.png": img, "COVID/.d.png": img, "__MACOSX/COVID/._a.png": b"x",
        "README.txt": b"hi", "empty/": b""})
    found = uploads.collect([archive])
    assert [(i.name, i.label) for i in found.items] == [("COVID/a.png", "COVID"), ("Normal/b.JPG", "Normal"),
                                                         ("top.png", None)]
    assert found.items[0].read() == img
    reasons = {s.rel: s.reason for s in found.skipped}
    assert reasons == {
        "../up.png": "its path leaves the zip (absolute or with ..)",
        "/abs.png": "its path leaves the zip (absolute or with ..)",
        "a/../../x.png": "its path leaves the zip (absolute or with ..)",
        ".hidden/c.png": "a hidden file", "COVID/.d.png": "a hidden file",
        "__MACOSX/COVID/._a.png": "macOS metadata", "README.txt": "not an image file name"}
    text = uploads.skipped_text(found.skipped)
    assert text.startswith("**7 file(s) skipped:**") and "`../up.png`: its path leaves the zip" in text


def test_sizes_are_checked_on_the_directory_before_anything_is_extracted(tmp_path, monkeypatch):
    small, big = png_bytes((16, 16)), b"\0" * (uploads.MAX_MEMBER_BYTES + 1)  # 16 MiB of zeros: ~16 KB zipped
    archive = _zip(tmp_path / "bomb.zip", {"A/big.png": big, "A/ok.png": small, "B/ok2.png": small})
    assert archive.stat().st_size < 100_000

    def never(*args):
        raise AssertionError("a member was read while collecting")
    monkeypatch.setattr(uploads, "read_member", never)
    found = uploads.collect([archive])
    assert [i.name for i in found.items] == ["A/ok.png", "B/ok2.png"]
    assert [(s.rel, s.reason) for s in found.skipped] == [("A/big.png", "over 16 MiB")]
    monkeypatch.setattr(uploads, "MAX_TOTAL_BYTES", len(small) + 10)
    found = uploads.collect([archive])
    assert [i.name for i in found.items] == ["A/ok.png"]
    assert found.skipped[-1] == uploads.Skipped("B/ok2.png", f"over the batch's {0} MiB in all")
    monkeypatch.setattr(uploads, "MAX_TOTAL_BYTES", 1 << 30)
    monkeypatch.setattr(uploads, "MAX_IMAGES", 1)
    found = uploads.collect([archive])
    assert [i.name for i in found.items] == ["A/ok.png"]
    assert found.skipped[-1] == uploads.Skipped("B/ok2.png", "over the 1-image limit of a batch")


def test_a_member_larger_than_it_declares_is_refused_when_read(tmp_path):
    archive = _zip(tmp_path / "t.zip", {"A/x.png": b"\0" * 1000})
    info = zipfile.ZipFile(archive).getinfo("A/x.png")
    info.file_size = 10  # a lying directory: reading stops at the declared size (and the CRC then fails)
    with pytest.raises(DataError, match="A/x.png: cannot be read from the zip"):
        uploads.read_member(archive, info)


def test_loose_files_folders_and_nothing_usable(tmp_path):
    (tmp_path / "tree" / "Normal").mkdir(parents=True)
    (tmp_path / "tree" / "Normal" / "a.png").write_bytes(png_bytes())
    (tmp_path / "tree" / "top.png").write_bytes(png_bytes())
    (tmp_path / "tree" / "Normal" / "loop").symlink_to(tmp_path / "tree")
    loose = tmp_path / "x.jpeg"
    loose.write_bytes(b"jpeg bytes")
    found = uploads.collect([tmp_path / "tree", loose])
    assert [(i.name, i.label) for i in found.items] == [("Normal/a.png", "Normal"), ("top.png", None),
                                                         ("x.jpeg", None)]
    assert found.items[2].read() == b"jpeg bytes"
    assert [s.rel for s in found.skipped] == ["Normal/loop"]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match=r"No images found: .*\(skipped notes.txt: not an image or a zip\)"):
        uploads.collect([notes])
    with pytest.raises(DataError, match="bad.zip is not a valid zip file"):
        uploads.collect([_bad_zip(tmp_path)])


def _bad_zip(tmp_path: Path) -> Path:
    path = tmp_path / "bad.zip"
    path.write_bytes(b"PK not really")
    return path

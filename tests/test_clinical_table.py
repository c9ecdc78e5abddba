"""camserve.clinical_table: the one clinical-CSV reader and its lookup rule, on hand-written files."""

from __future__ import annotations

from pathlib import Path

import pytest

from camserve.clinical_table import normalise_path, parse_table, read_table
from camserve.errors import MAX_MESSAGE, DataError

FEATURES = ["composition", "echogenicity", "margins", "calcifications", "sex", "age"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_normalised_and_empty_cells_are_missing(tmp_path: Path) -> None:
    text = ("\ufeffpath, age ,sex\n"  # a BOM and padded header cells
            "test/benign/a.png,61,F\n"
            "test\\malignant\\b.png,,M\n"  # Windows separators, an empty cell
            "./test//benign/c.png, 40 ,\n"
            ",,\n"  # blank rows are skipped
            "test/benign/d.png,,\n")
    table = read_table(write(tmp_path / "clinical.csv", text), FEATURES)
    assert table.rows == {"test/benign/a.png": {"age": "61", "sex": "F"}, "test/malignant/b.png": {"sex": "M"},
                          "test/benign/c.png": {"age": "40"}, "test/benign/d.png": {}}
    assert table.columns == ("age", "sex") and table.name == "clinical.csv" and table.outside == 0
    assert len(table.sha256) == 64


def test_the_lookup_rule() -> None:
    table = parse_table(b"path,age\n"
                        b"test/benign/00001.png,1\n"
                        b"train/benign/00002.png,2\n"
                        b"test/benign/00002.png,3\n"
                        b"00003.png,4\n"
                        b"test/malignant/00004.png,\n", Path("c.csv"), FEATURES)
    look = table.lookup
    assert look("test/benign/00001.png") == {"age": "1"}  # exact
    assert look("benign/00001.png") == {"age": "1"}  # the image path is the row's tail
    assert look("00001.png") == {"age": "1"}  # a bare file name
    assert look("test\\benign\\00001.png") == {"age": "1"}
    assert look("test/benign/00002.png") == {"age": "3"}  # exact wins over the other split's row
    assert look("benign/00002.png") is None and table.candidates("00002.png") == [
        "test/benign/00002.png", "train/benign/00002.png"]  # two rows qualify: no guess
    assert look("any/folder/00003.png") == {"age": "4"}  # the row's path is the image's tail
    assert look("malignant/00004.png") == {}  # a row with every cell empty, not "no row"
    assert look("other/00001.png") is None  # same file name, different folder
    assert look("enign/00001.png") is None  # tails split at "/" only
    assert look("TEST/benign/00001.png") is None  # case-sensitive
    assert look("") is None and look("unknown.png") is None


def test_rebase_keys_rows_by_the_data_folder(tmp_path: Path) -> None:
    text = ("path,age\n"
            "test/benign/a.png,61\n"
            "test/malignant/b.png,\n"
            "train/benign/c.png,40\n"  # another split: outside the data folder
            "../elsewhere.png,3\n")
    table = read_table(write(tmp_path / "set" / "clinical.csv", text), FEATURES)
    rebased = table.rebase(tmp_path / "set", tmp_path / "set" / "test")
    assert rebased.rows == {"benign/a.png": {"age": "61"}, "malignant/b.png": {}}
    assert rebased.outside == 2 and rebased.sha256 == table.sha256 and rebased.columns == ("age",)
    assert rebased.lookup("benign/a.png") == {"age": "61"} and rebased.lookup("a.png") == {"age": "61"}
    same = table.rebase(tmp_path / "set", tmp_path / "set")
    assert set(same.rows) == {"test/benign/a.png", "test/malignant/b.png", "train/benign/c.png"}
    assert same.outside == 1


@pytest.mark.parametrize("text,message", [
    ("image,age\na.png,3\n", "c.csv: the header needs a 'path' column (the image path), found: 'image', 'age'"),
    ("", "c.csv: the header needs a 'path' column (the image path), found: nothing"),
    ("path,weight\na.png,70\n", "c.csv: column 'weight' is not a clinical field of the model; allowed columns: "
                                "path, composition, echogenicity, margins, calcifications, sex, age"),
    ("path,age,age\na.png,3,3\n", "c.csv: repeated columns; allowed columns: path, composition, echogenicity, "
                                "margins, calcifications, sex, age"),
    ("path,age\na.png,3\n./a.png,4\n", "c.csv: lines 2 and 3 are both for 'a.png'"),
    ("path,age\na.png,3,4\n", "c.csv line 2: 3 cells for 2 columns"),
    ("path,age\n../elsewhere.png,3\n .,4\n", "c.csv line 3: empty 'path'"),
    ('path,age\n"a.png,3\n', "c.csv line 2: 1 cells for 2 columns"),  # an unterminated quote eats the rest
])
def test_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        read_table(write(tmp_path / "c.csv", text), FEATURES)
    assert info.value.message == message


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the clinical CSV .*missing.csv: No such file or directory"):
        read_table(tmp_path / "missing.csv", FEATURES)
    big = write(tmp_path / "big.csv", "path,age\n" + "a.png,1\n" * 100)
    with pytest.raises(DataError, match=r"^big.csv is over 100 bytes$"):
        read_table(big, FEATURES, max_bytes=100)
    assert list(read_table(write(tmp_path / "ok.csv", "path\na.png\n"), FEATURES, max_bytes=100).rows) == ["a.png"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,sex\nä.png,F\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"^latin.csv is not a UTF-8 CSV file \(UnicodeDecodeError\)$"):
        read_table(latin, FEATURES)


def test_messages_stay_short_whatever_the_file_holds(tmp_path: Path) -> None:
    huge = "x" * 100_000
    for text in (f"path,{huge}\na.png,1\n", f"{huge},age\n", f"path,age\n{huge}.png,1\n{huge}.png,2\n"):
        with pytest.raises(DataError) as info:
            read_table(write(tmp_path / "c.csv", text), FEATURES)
        assert len(info.value.message) <= MAX_MESSAGE and huge not in info.value.message


def test_normalise_path() -> None:
    assert [normalise_path(p) for p in ("a\\b.png", "./a//b.png", " a/b.png ", ".", "", "a/../b.png")] == [
        "a/b.png", "a/b.png", "a/b.png", "", "", "b.png"]

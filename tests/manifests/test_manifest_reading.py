"""Reading manifest files: the exact words of a YAML error, which files of a folder are read,
and what a file that cannot be read or loaded says.

A YAML error is the first thing a user sees after a typo; its message says where (line and
column, from 1), what the parser expected, the offending line as written, and, for the commonest
slip (a key indented one space off), the line above it to compare with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests import safe_yaml
from placement.manifests.kserve import load_manifest_dir, parse_documents, read_manifest_file


def yaml_error(text: str) -> str:
    docs, errors = parse_documents(text, "m.yaml")
    assert docs == []
    (message,) = errors
    return message


@pytest.mark.parametrize(("text", "expected"), [
    # on the first line: the line itself, and no line above to compare with
    ("a: b: c\n",
     "m.yaml: not valid YAML at line 1, column 5: mapping values are not allowed in this context: 'a: b: c'"),
    # on the second line: compared with the first
    ("x: 1\n  a: b: c\n",
     "m.yaml: not valid YAML at line 2, column 4: mapping values are not allowed in this context: "
     "'  a: b: c' (check its indentation against line 1: 'x: 1')"),
    # both lines keep their indentation (it is what the user must compare); trailing blanks go
    ("x:\n  y: 1   \n  z: a: b   \n",
     "m.yaml: not valid YAML at line 3, column 7: mapping values are not allowed in this context: "
     "'  z: a: b' (check its indentation against line 2: '  y: 1')"),
    # the parser's context comes first; no indentation hint for other problems
    ("k: v\n- x\n",
     "m.yaml: not valid YAML at line 2, column 1: while parsing a block mapping; did not find expected key: "
     "'- x'"),
    # the mark past the last line: no line to show
    ("a: [1, 2\n",
     "m.yaml: not valid YAML at line 2, column 1: while parsing a flow sequence; did not find expected ',' "
     "or ']'"),
])
def test_yaml_errors_say_where_and_show_the_line(text: str, expected: str) -> None:
    assert yaml_error(text) == expected


def test_a_yaml_error_without_a_position_says_what_the_reader_said() -> None:
    """A control character is refused by the reader, which gives no line and column."""
    message = yaml_error("a: 1\n\x01\n")
    assert message.startswith("m.yaml: not valid YAML: unacceptable character #x0001: control characters "
                              "are not allowed"), message
    assert "position 5" in message


def test_a_number_too_long_to_convert_says_why() -> None:
    docs, errors = parse_documents("x: " + "9" * 5000 + "\n", "h.yaml")
    assert docs == []
    (message,) = errors
    assert message.startswith("h.yaml: cannot be loaded: '") and "5000 digits" in message


def test_a_file_read_without_a_name_for_messages_is_named_by_its_path(tmp_path: Path) -> None:
    good = write(tmp_path / "rt.yaml", runtime("rt"))
    mf = read_manifest_file(good)
    assert (mf.source, mf.ok, len(mf.documents or ())) == (str(good), True, 1)
    assert read_manifest_file(good, "shown.yaml").source == "shown.yaml"
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    broken = read_manifest_file(bad, "bin.yaml")
    assert (broken.source, broken.documents, broken.ok) == ("bin.yaml", None, False)
    assert read_manifest_file(bad).errors[0].startswith(f"{bad}: cannot read: ")


def test_a_file_too_large_is_refused_by_its_size_before_it_is_read(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Not read at all: not even decoded (bytes that are not UTF-8 do not change the message)."""
    monkeypatch.setattr(safe_yaml, "MAX_MANIFEST_BYTES", 100)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"\xff" * 200)
    mf = read_manifest_file(big, "big.yaml")
    assert mf.documents is None
    assert mf.errors == ("big.yaml is 200 bytes, more than the 100 msm reads in one manifest file; not read",)


def test_hidden_files_and_other_suffixes_are_not_read(tmp_path: Path) -> None:
    d = local_dir(tmp_path, files=("mnist-svm.joblib",))
    write(d / "rt.yaml", runtime("mlserver"))
    write(d / "m.yml", isvc("m"))
    write(d / ".hidden.yaml", isvc("hidden"))
    write(d / ".#m.yaml", "{{ an editor's lock file")
    write(d / "notes.txt", isvc("notes"))
    (d / "folder.yaml").mkdir()
    state = load_manifest_dir(d)
    assert set(state.models) == {"m"} and state.errors == {}


def test_a_manifest_folder_that_is_not_a_folder(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "m.yaml", isvc("m"))
    with pytest.raises(ValueError) as err:
        load_manifest_dir(not_a_dir)
    assert str(err.value) == f"{not_a_dir} is not a directory"

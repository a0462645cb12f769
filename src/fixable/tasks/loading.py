"""Reading benchmark files: JSON Lines (optionally gzipped), CSV, and Hugging Face datasets.

Every parse problem becomes a :class:`fixable.errors.DataError` naming the file, the line
and the field, so a user with a broken file knows exactly where to look. The Hugging Face
``datasets`` library is imported only when a task is asked to download, never in tests.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixable.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One row of a data file, with where it came from (for error messages and ids)."""

    fields: dict[str, Any]
    source: str  # file path, or "hf:<dataset>/<split>"
    line: int  # 1-based: line (JSONL), line of the row (CSV, header is 1), row (datasets)

    def get(self, name: str, kind: type | tuple[type, ...] = str) -> Any:
        """The field ``name``, checked to be of ``kind``; a DataError naming file, line, field."""
        if name not in self.fields:
            present = ", ".join(sorted(map(str, self.fields))) or "none"
            raise DataError(
                f"{self.source}:{self.line}: missing field {name!r} (fields present: {present})"
            )
        value = self.fields[name]
        if not isinstance(value, kind):
            wanted = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise DataError(
                f"{self.source}:{self.line}: field {name!r} must be {wanted}, got {type(value).__name__}"
            )
        return value


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(path: str | Path) -> list[Record]:
    """All records of a JSON Lines file (``.gz`` is decompressed); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = []
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(value, dict):
                    raise DataError(
                        f"{path}:{number}: expected a JSON object, got {type(value).__name__}"
                    )
                records.append(Record(value, str(path), number))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not records:
        raise DataError(f"{path}: no records")
    return records


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[Record]:
    """All rows of a CSV file with a header line; ``required`` columns must exist and be non-empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = []
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for name in required:
                if name not in header:
                    raise DataError(
                        f"{path}:1: missing column {name!r} (columns present: {', '.join(header) or 'none'})"
                    )
            for row in reader:
                line = reader.line_num
                for name in required:
                    if not (row.get(name) or "").strip():
                        raise DataError(f"{path}:{line}: field {name!r} is empty")
                records.append(
                    Record({k: v for k, v in row.items() if k is not None}, str(path), line)
                )
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from None
    if not records:
        raise DataError(f"{path}: no records")
    return records


def resolve_file(path: str | Path, names: Sequence[str], what: str) -> Path:
    """``path`` itself when it is a file, else the first of ``names`` inside the directory."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no {what} file here (looked for {', '.join(names)})")
    raise DataError(f"{path}: no such file or directory for {what}")


def load_hf(dataset: str, split: str, config: str | None = None) -> list[Record]:
    """Records of a Hugging Face dataset split (needs ``pip install datasets`` and network)."""
    try:
        import datasets  # heavy and optional: imported only here
    except ImportError:
        raise ConfigError(
            f"loading {dataset!r} from the Hugging Face Hub needs the datasets library: "
            "pip install 'fixable[datasets]' (or pass path= to a local copy)"
        ) from None
    log.info("loading %s (%s, split %s) from the Hugging Face Hub", dataset, config, split)
    rows = datasets.load_dataset(dataset, config, split=split)
    source = f"hf:{dataset}{'/' + config if config else ''}/{split}"
    return [Record(dict(row), source, i) for i, row in enumerate(rows, start=1)]


def select(items: list, n: int | None, seed: int) -> list:
    """All ``items`` in file order, or ``n`` of them drawn with ``seed`` and kept in file order."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ConfigError(f"number of problems must be >= 0, got {n}")
    chosen = sorted(random.Random(f"select-{seed}").sample(range(len(items)), n))
    return [items[i] for i in chosen]


def check_choice(task: str, name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{task} {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        )


def iter_shots(records: Sequence, k: int, seed: int, exclude: object = None) -> Iterator:
    """``k`` few-shot exemplars drawn with ``seed`` from ``records``, never ``exclude`` itself."""
    pool = [r for r in records if r is not exclude]
    if k > len(pool):
        raise ConfigError(f"asked for {k} few-shot examples but only {len(pool)} are available")
    yield from random.Random(f"shots-{seed}").sample(pool, k)


def int_choices(task: str, name: str, value, low: int, high: int) -> frozenset[int] | None:
    """An option given as one integer or a list of them (``steps = [2, 3]``), each in
    ``[low, high]``; None stays None (no filter)."""
    if value is None:
        return None
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        or not all(low <= v <= high for v in values)
    ):
        raise ConfigError(
            f"{task} {name} must be an integer in [{low}, {high}] or a list of them, got {value!r}"
        )
    return frozenset(values)


def take_half(task: str, items: list, half) -> list:
    """``items`` at even (``half=0``) or odd (``half=1``) positions; all of them for None.

    Two disjoint halves of one slice: ``fixable real select`` measures pass@1 on half 0
    and a study that it chose the slice for probes half 1, so the choice never sees the
    problems the study is scored on."""
    if half is None:
        return list(items)
    if half not in (0, 1) or isinstance(half, bool):
        raise ConfigError(f"{task} half must be 0, 1 or absent, got {half!r}")
    return list(items[half::2])

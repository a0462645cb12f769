"""The run store: a directory of Parquet shards that DuckDB reads in place.

A run is a directory::

    RUN/
      manifest.json          everything needed to reproduce the run (see ``new_manifest``)
      rollouts/*.parquet     rollout shards (schema ``fixable.schema.ROLLOUTS``)
      problems/*.parquet     problem shards (schema ``fixable.schema.PROBLEMS``)
      quarantine/            corrupt shards moved aside, each with a ``.why.txt`` beside it

Shards are immutable. A writer buffers rows and writes each batch as a new shard named
``{worker}-{uuid}.parquet``: first to a temporary name, fsynced, then renamed atomically,
so a reader (or a writer killed mid-write) never sees half a shard. Because every writer
has its own shard names, many processes on many hosts can write into one run on a shared
filesystem; they must sample disjoint keys (``fixable.sampling`` partitions by problem).
Readers deduplicate nothing; ``Run.duplicates()`` finds and reports a key written twice.

A shard that cannot be read (truncated, bit rot, foreign columns) is never silently
skipped: it is moved to ``quarantine/`` with the reason, and the user is told that its
rows are missing and that re-running the sampling command samples them again. Every reader
verifies page checksums before DuckDB sees a shard (see ``Run.connect``).

Schema changes are append-only, numbered ``MIGRATIONS``: opening a run written under an
older schema version upgrades its manifest and shards (each shard records its version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fixable import schema
from fixable.errors import StoreError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TABLES = {"rollouts": schema.ROLLOUTS, "problems": schema.PROBLEMS}
QUARANTINE = "quarantine"
LOCK = ".lock"
RUN_FORMAT = "fixable-run"
VERSION_KEY = b"fixable.schema_version"
DEFAULT_FLUSH_EVERY = 2048  # rows per shard: bounds memory and what a crash can lose
DEFAULT_FLUSH_SECONDS = 120.0  # ... and so does time, for slow models
_TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One step of the schema: upgrades a manifest and shards from ``version - 1`` to ``version``.

    Append-only: a released migration is never edited, a schema change adds the next one.
    """

    version: int
    description: str
    manifest: Callable[[dict], dict]
    rollouts: Callable[[pa.Table], pa.Table]
    problems: Callable[[pa.Table], pa.Table]


def conform(table: pa.Table, target: pa.Schema, where: str = "table") -> pa.Table:
    """``table`` with exactly ``target``'s columns, in order and type; absent columns
    become nulls, but the key columns (and, for problems, task and id) must be there."""
    required = [c for c in (*schema.KEY, "task", "problem_id") if c in target.names]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise StoreError(f"{where} lacks required column(s) {', '.join(missing)}")
    columns = []
    for field in target:
        if field.name in table.column_names:
            column = table.column(field.name)
            try:
                columns.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise StoreError(
                    f"{where}: column {field.name!r} is {column.type}, expected {field.type} ({e})"
                ) from None
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=target)


def _m001_manifest(manifest: dict) -> dict:
    manifest = dict(manifest)
    manifest.setdefault("format", RUN_FORMAT)
    manifest.setdefault("created", _now())
    manifest.setdefault("run_seed", None)
    manifest.setdefault("models", {})
    manifest.setdefault("invocations", [])
    return manifest


# Version 0 is a run without any schema version: shards written by hand or converted from
# another harness. Migration 1 conforms them to the first versioned schema.
MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "first versioned layout: conform shards to the rollouts/problems schemas",
        _m001_manifest,
        lambda t: conform(t, schema.ROLLOUTS),
        lambda t: conform(t, schema.PROBLEMS),
    ),
]


def _target_version() -> int:
    return MIGRATIONS[-1].version if MIGRATIONS else 0


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_worker() -> str:
    """``{host}-{pid}``: unique among live writers, readable in the ``worker`` column."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open a directory for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(final: Path) -> Path:
    # the pid and host let a later writer on the same host delete what a dead one left
    return final.with_name(f".{final.name}.{os.getpid()}@{socket.gethostname()}{_TMP_SUFFIX}")


def _no_space(error: BaseException) -> bool:
    """A full disk or quota, as the OS or pyarrow (which may keep only the text) reports it."""
    if not isinstance(error, OSError):
        return False
    text = str(error)
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or any(
        words in text for words in ("No space left on device", "Disk quota exceeded")
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file, fsync, and an atomic rename."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise StoreError(
                f"no space left on the device holding {path.parent} while writing {path.name}; "
                "free space there (or write to another --out) and re-run the same command"
            ) from None
        raise
    _fsync_dir(path.parent)


def write_shard(table: pa.Table, path: Path, version: int | None = None) -> Path:
    """Write one Parquet shard atomically, with page checksums and its schema version."""
    version = _target_version() if version is None else version
    meta = dict(table.schema.metadata or {})
    meta[VERSION_KEY] = str(version).encode()
    table = table.replace_schema_metadata(meta)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd", write_page_checksum=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # never a temporary shard left behind
        if _no_space(e):
            raise StoreError(
                f"no space left on the device holding {path.parent} while writing a shard of "
                f"{table.num_rows} rows; free space there (or write to another --out) and "
                "re-run the same command: it resumes where it stopped"
            ) from None
        raise
    _fsync_dir(path.parent)
    _VERIFIED[_fingerprint(path)] = version  # written whole by this process
    return path


def _shard_version(metadata: dict | None) -> int:
    if not metadata or VERSION_KEY not in metadata:
        return 0
    return int(metadata[VERSION_KEY])


# Shards known whole in this process: (path, size, mtime_ns) → their schema version.
_VERIFIED: dict[tuple[str, int, int], int] = {}


def _fingerprint(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def sql_string(value: str) -> str:
    """``value`` as a quoted SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def _arrow(relation) -> pa.Table:
    # duckdb renamed arrow() to to_arrow_table(); accept both
    to_table = getattr(relation, "to_arrow_table", None) or relation.arrow
    return to_table()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- quarantine


@dataclass(frozen=True)
class QuarantinedShard:
    """A shard that could not be read, and where it went."""

    path: Path  # where it was
    moved_to: Path  # where it is now
    reason: str
    n_rows: int | None  # rows its footer announced, when the footer was readable

    def __str__(self) -> str:
        rows = (
            f"its {self.n_rows} rows are"
            if self.n_rows is not None
            else "an unknown number of its rows are"
        )
        return (
            f"corrupt shard {self.path} ({self.reason}) moved to {self.moved_to}; "
            f"{rows} missing until you re-run the sampling command, "
            f"which samples those keys again"
        )


@dataclass
class VerifyReport:
    """What ``Run.verify`` found: shards checked, damaged now, and what is missing."""

    path: Path
    checked: int  # shards read page by page
    damaged: list[QuarantinedShard]  # quarantined by this verification
    # every rollouts shard in quarantine/ whose keys could be read: (shard, reason, keys
    # not in the run now)
    readable: list[tuple[Path, str, int]] = dataclasses.field(default_factory=list)
    # ... whose keys could not be read: (shard, reason, rows its footer announced)
    unknown: list[tuple[Path, str, int | None]] = dataclasses.field(default_factory=list)
    other: list[tuple[Path, str]] = dataclasses.field(default_factory=list)  # problems shards
    # (model, phase) → [rollouts missing, their problem ids]
    missing: dict[tuple[str, str], list] = dataclasses.field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """Nothing damaged now and nothing missing that re-running would sample."""
        return not (self.damaged or self.missing or self.unknown)

    def lines(self) -> list[str]:
        out = [
            f"{self.path}: {self.checked} shard(s) read page by page, "
            f"{len(self.damaged)} damaged now, "
            f"{len(self.readable) + len(self.unknown) + len(self.other)} in {QUARANTINE}/"
        ]
        out += [f"damaged: {q}" for q in self.damaged]
        for (model, phase), (count, problems) in sorted(self.missing.items()):
            out.append(
                f"missing: model {model!r} phase {phase!r}: {count} rollout(s) of "
                f"{len(problems)} problem(s); re-running the sampling command samples them again"
            )
        for shard, reason, rows in self.unknown:
            what = f"{rows} row(s)" if rows is not None else "an unknown number of rows"
            out.append(
                f"missing: {shard.name} ({reason}): {what} whose keys cannot be read; "
                "re-running the sampling command samples whatever is missing"
            )
        for shard, reason in self.other:
            out.append(
                f"in {QUARANTINE}: {shard.name} ({reason}); re-running the sampling command "
                "writes its problems again"
            )
        if self.whole:
            out.append("nothing is missing: re-running the sampling command samples nothing new")
        return out


# --------------------------------------------------------------------------- the run


def new_manifest(**fields: Any) -> dict:
    """A fresh manifest at the current schema version; ``fields`` are stored beside."""
    manifest = {
        "format": RUN_FORMAT,
        "schema_version": _target_version(),
        "created": _now(),
        "run_seed": None,
        "models": {},
        "invocations": [],
    }
    manifest.update(fields)
    return manifest


class Run:
    """An existing run directory: its manifest, shards, DuckDB views and writers.

    ``Run(path)`` opens a run (and upgrades an older schema unless ``migrate=False``);
    ``Run.create(path)`` makes a new one or opens it when it exists.
    """

    def __init__(self, path: str | os.PathLike, *, migrate: bool = True):
        self.path = Path(path)
        self.quarantined: list[QuarantinedShard] = []
        if not (self.path / MANIFEST).is_file():
            if not self.path.exists():
                hint = "no such directory"
            elif not self.path.is_dir():
                hint = "not a directory"
            else:
                hint = f"no {MANIFEST} in it"
            raise StoreError(
                f"{self.path} is not a run ({hint}); create one with "
                f"`fixable sample ... --out {self.path}`"
            )
        self._manifest = self._read_manifest()
        version = self._manifest.get("schema_version", 0)
        if not isinstance(version, int) or version > _target_version():
            raise StoreError(
                f"{self.path} has schema version {version!r}; this fixable reads versions up to "
                f"{_target_version()}: upgrade fixable (pip install -U fixable)"
            )
        if version < _target_version():
            if not migrate:
                raise StoreError(
                    f"{self.path} has schema version {version}, this fixable writes "
                    f"{_target_version()}: open it with migrate=True to upgrade it"
                )
            self.migrate()

    @classmethod
    def create(cls, path: str | os.PathLike, **manifest_fields: Any) -> Run:
        """Create a run at ``path`` (its parents too) or open the one already there."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"cannot create a run at {path}: it is a file")
        path.mkdir(parents=True, exist_ok=True)
        for table in TABLES:
            (path / table).mkdir(exist_ok=True)
        with _locked(path):
            if not (path / MANIFEST).exists():
                if any(next((path / t).glob("*.parquet"), None) for t in TABLES):
                    raise StoreError(
                        f"{path} holds shards but no {MANIFEST}; it is not a run this "
                        f"fixable made — write to another --out"
                    )
                atomic_write_bytes(path / MANIFEST, _dump(new_manifest(**manifest_fields)))
        return cls(path)

    # ---------------------------------------------------------------- manifest

    def _read_manifest(self) -> dict:
        text = (self.path / MANIFEST).read_text()
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.path / MANIFEST} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{self.path / MANIFEST} must hold a JSON object")
        return manifest

    @property
    def manifest(self) -> dict:
        """The manifest as last read or written by this object (``reload`` re-reads it)."""
        return self._manifest

    def reload(self) -> dict:
        self._manifest = self._read_manifest()
        return self._manifest

    def update_manifest(self, change: Callable[[dict], dict | None]) -> dict:
        """Apply ``change`` to the manifest on disk under the run's lock, write it atomically.

        ``change`` receives the freshly read manifest (other writers may have updated it)
        and edits it in place or returns a new one.
        """
        with _locked(self.path):
            manifest = self._read_manifest()
            changed = change(manifest)
            manifest = manifest if changed is None else changed
            atomic_write_bytes(self.path / MANIFEST, _dump(manifest))
        self._manifest = manifest
        return manifest

    # ---------------------------------------------------------------- compatibility

    def register_model(
        self,
        model: str,
        identity: dict,
        sampling: dict,
        *,
        run_seed: int,
        invocation: dict | None = None,
    ) -> dict:
        """Record that ``model`` is sampled into this run, refusing what would mix
        rollouts that cannot be compared: another run seed, other weights (a file's
        sha256), another precision or backend, or other sampling parameters (``sampling``,
        e.g. max_tokens and stop). ``invocation`` is appended to the manifest's
        invocations. This is the one compatibility check of a run's sampling; a study
        adds its own fields with ``record_study``."""

        def change(manifest: dict) -> None:
            if manifest.get("run_seed") is None:
                manifest["run_seed"] = run_seed
            elif manifest["run_seed"] != run_seed:
                raise StoreError(
                    f"{self.path} was sampled with seed {manifest['run_seed']}, got seed "
                    f"{run_seed}: resume with --seed {manifest['run_seed']} or write to a new --out"
                )
            models = manifest.setdefault("models", {})
            known = models.get(model)
            if known is None:
                models[model] = {"identity": identity, "sampling": sampling}
            else:
                _check_same_model(self.path, model, known, identity, sampling)
            if invocation is not None:
                manifest.setdefault("invocations", []).append(invocation)

        return self.update_manifest(change)

    def record_study(
        self, name: str, config: dict, *, content: Sequence[str], command: str | None = None
    ) -> dict:
        """Store a study's resolved ``config`` under ``name`` (its history under
        ``{name}_history``), refusing to resume a run made with other values of the
        ``content`` fields: those that change the rollouts."""
        stored = {"config": config, "command": command}

        def change(manifest: dict) -> None:
            previous = (manifest.get(name) or {}).get("config")
            if previous is not None:
                changed = [f for f in content if previous.get(f) != config.get(f)]
                if changed:
                    field = changed[0]
                    raise StoreError(
                        f"{self.path} was sampled by a {name} with {field}="
                        f"{previous.get(field)!r}, now {config.get(field)!r}: resume with the "
                        f"same configuration (`fixable {name} --config {self.path}`) or write "
                        f"to a new --out"
                    )
            history = manifest.setdefault(f"{name}_history", [])
            history.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **stored})
            manifest[name] = stored

        return self.update_manifest(change)

    # ---------------------------------------------------------------- migrations

    def migrate(self) -> int:
        """Upgrade the manifest and every shard to the current schema version; returns the
        number of shards rewritten. Interrupted migrations resume: each shard keeps its version."""
        target = _target_version()
        rewritten = 0
        with _locked(self.path):
            for table in TABLES:
                for shard in self.shard_paths(table):
                    try:
                        version = _shard_version(pq.read_schema(shard).metadata)
                    except (OSError, pa.ArrowException) as e:
                        self.quarantine(shard, f"unreadable footer: {e}", None)
                        continue
                    if version < target:
                        self._migrate_shard(table, shard, version)
                        rewritten += 1
            manifest = self._read_manifest()
            version = manifest.get("schema_version", 0)
            for migration in MIGRATIONS:
                if migration.version > version:
                    manifest = migration.manifest(manifest)
                    log.info("%s: manifest migrated to schema %d", self.path, migration.version)
            manifest["schema_version"] = target
            atomic_write_bytes(self.path / MANIFEST, _dump(manifest))
            self._manifest = manifest
        return rewritten

    def _migrate_shard(self, table_name: str, shard: Path, version: int) -> bool:
        try:
            table = pq.read_table(shard)
        except (OSError, pa.ArrowException) as e:
            self.quarantine(shard, f"unreadable while migrating: {e}", None)
            return False
        try:
            for migration in MIGRATIONS:
                if migration.version > version:
                    table = getattr(migration, table_name)(table)
        except StoreError as e:
            self.quarantine(shard, f"cannot migrate from schema {version}: {e}", table.num_rows)
            return False
        write_shard(table.replace_schema_metadata(None), shard)
        log.info("%s migrated from schema %d to %d", shard, version, _target_version())
        return True

    # ---------------------------------------------------------------- shards

    def shard_paths(self, table: str = "rollouts") -> list[Path]:
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        directory = self.path / table
        return sorted(directory.glob("*.parquet")) if directory.is_dir() else []

    def check(self, *, full: bool = False, again: bool = False) -> list[QuarantinedShard]:
        """Find unreadable shards and move them to ``quarantine/``; returns those moved now.

        The quick check reads every footer (truncation, foreign columns); ``full=True``
        also reads every page with its checksum (bit rot inside a shard). Shards are
        immutable, so a full check skips those this process wrote or fully read before
        (same size and modification time), unless ``again``.
        """
        moved: list[QuarantinedShard] = []
        target = _target_version()
        for table_name, expected in TABLES.items():
            for shard in self.shard_paths(table_name):
                n_rows = None
                if full and not again and _VERIFIED.get(_fingerprint(shard)) == target:
                    continue
                try:
                    parquet = pq.ParquetFile(shard, page_checksum_verification=full)
                    n_rows = parquet.metadata.num_rows
                    version = _shard_version(parquet.schema_arrow.metadata)
                    if version > target:
                        raise StoreError(
                            f"shard {shard} has schema version {version}; this fixable reads "
                            f"up to {target}: upgrade fixable"
                        )
                    if version < target:
                        self._migrate_shard(table_name, shard, version)
                        continue
                    mismatch = _schema_mismatch(parquet.schema_arrow, expected)
                    if mismatch:
                        moved.append(self.quarantine(shard, mismatch, n_rows))
                        continue
                    if full:
                        for i in range(parquet.num_row_groups):
                            parquet.read_row_group(i)
                        _VERIFIED[_fingerprint(shard)] = version
                except StoreError:
                    raise
                except (OSError, pa.ArrowException, ValueError) as e:
                    moved.append(self.quarantine(shard, _short(e), n_rows))
        self.quarantined.extend(moved)
        return moved

    def verify(self) -> VerifyReport:
        """Read every page of every shard again (checksums included), quarantine the damaged
        ones, and say what is missing: the rollout keys of quarantined shards that are not in
        the run now, which re-running the sampling command samples again."""
        checked = sum(len(self.shard_paths(t)) for t in TABLES)
        moved = self.check(full=True, again=True)
        report = VerifyReport(self.path, checked, moved)
        present = self.keys()
        directory = self.path / QUARANTINE
        for shard in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
            why_file = shard.with_name(shard.name + ".why.txt")
            why = why_file.read_text() if why_file.is_file() else ""
            reason = next(
                (
                    line[len("reason: ") :]
                    for line in why.splitlines()
                    if line.startswith("reason: ")
                ),
                "no reason recorded",
            )
            if not shard.name.startswith("rollouts-"):
                report.other.append((shard, reason))
                continue
            try:
                keys = pq.read_table(
                    shard, columns=list(schema.KEY), page_checksum_verification=True
                )
            except (OSError, pa.ArrowException, ValueError):
                rows = next(
                    (
                        line.split(": ", 1)[1]
                        for line in why.splitlines()
                        if line.startswith("rows announced: ")
                    ),
                    "None",
                )
                report.unknown.append((shard, reason, None if rows == "None" else int(rows)))
                continue
            missing = 0
            for row in zip(*(keys.column(c).to_pylist() for c in schema.KEY), strict=True):
                if row not in present:
                    present.add(row)  # a key in two quarantined shards is sampled once
                    missing += 1
                    group = report.missing.setdefault((row[0], row[2]), [0, set()])
                    group[0] += 1
                    group[1].add(row[1])
            report.readable.append((shard, reason, missing))
        return report

    def quarantine(
        self, shard: Path, reason: str, n_rows: int | None, *, corrupt: bool = True
    ) -> QuarantinedShard:
        """Move ``shard`` out of the run into ``quarantine/`` with a ``.why.txt`` beside it
        (never overwriting an earlier one). ``corrupt=False`` for a readable shard moved
        aside for another reason (a redundant copy), logged at INFO instead of WARNING."""
        directory = self.path / QUARANTINE
        directory.mkdir(exist_ok=True)
        target = directory / f"{shard.parent.name}-{shard.name}"
        while target.exists():  # never overwrite an earlier quarantined shard
            target = target.with_name(f"{target.stem}-{uuid.uuid4().hex[:6]}{target.suffix}")
        os.replace(shard, target)
        why = f"{_now()}\nfrom: {shard}\nreason: {reason}\nrows announced: {n_rows}\n"
        target.with_name(target.name + ".why.txt").write_text(why)
        _fsync_dir(directory)
        entry = QuarantinedShard(shard, target, reason, n_rows)
        if corrupt:
            log.warning("corrupt shard %s (%s) moved to %s", shard, reason, target)
        else:
            log.info("shard %s moved to %s: %s", shard, target, reason)
        return entry

    def clean_temporaries(self) -> int:
        """Delete temporary files left by dead writers of this host; returns how many."""
        host = socket.gethostname()
        removed = 0
        for table in TABLES:
            for tmp in (self.path / table).glob(f".*{_TMP_SUFFIX}"):
                owner = tmp.name[: -len(_TMP_SUFFIX)].rsplit(".", 1)[-1]
                pid, _, owner_host = owner.partition("@")
                if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    # ---------------------------------------------------------------- reading

    def connect(self, *, check: bool = True):
        """A DuckDB connection with views ``rollouts`` and ``problems`` over the shards.

        The views cover the shards present now; shards written later need a new connection.
        """
        import duckdb

        if check:
            # Every page of every shard, checksums included, before DuckDB (which does not
            # verify them) reads a value: a damaged page is refused, never read. Once per
            # shard per process (shards are immutable; see ``check``).
            moved = self.check(full=True)
            if moved:
                raise StoreError(
                    "reading the run found corrupt shards: "
                    + "; ".join(map(str, moved))
                    + ". Re-run the command to read the rest."
                )
        con = duckdb.connect()
        for table, table_schema in TABLES.items():
            shards = self.shard_paths(table)
            if shards:
                files = ", ".join(sql_string(str(s)) for s in shards)
                source = f"read_parquet([{files}])"
            else:
                con.register(f"_empty_{table}", table_schema.empty_table())
                source = f"_empty_{table}"
            # problems may be written by several workers: the view shows each once
            distinct = "DISTINCT " if table == "problems" else ""
            con.execute(f"CREATE VIEW {table} AS SELECT {distinct}* FROM {source}")
        return con

    @contextlib.contextmanager
    def reading(self) -> Iterator:
        """A connection (see ``connect``) whose read errors are checked for corrupt shards:
        one found is quarantined and reported as a StoreError naming it; other DuckDB
        errors become one-line StoreErrors."""
        import duckdb

        con = self.connect()
        try:
            yield con
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as e:
            raise StoreError(f"query failed: {_short(e)}") from None
        except duckdb.Error as e:
            # corruption surfaces as many kinds of error (IO, invalid input, thrift, decoding)
            moved = self.check(full=True, again=True)
            if not moved:
                raise StoreError(f"query failed: {_short(e)}") from None
            raise StoreError(
                "reading the run found corrupt shards: "
                + "; ".join(map(str, moved))
                + ". Re-run the query to read the rest."
            ) from None
        finally:
            con.close()

    def query(self, sql: str, *, limit: int | None = None) -> pa.Table:
        """The result of ``sql`` over the views, as a pyarrow Table (at most ``limit`` rows)."""
        with self.reading() as con:
            relation = con.sql(sql)
            if relation is None:  # a statement without a result (e.g. CREATE TABLE)
                return pa.table({})
            if limit is not None:
                relation = relation.limit(limit)
            return _arrow(relation)

    def copy(self, sql: str, path: str | os.PathLike, fmt: str) -> Path:
        """Write the result of ``sql`` to ``path`` as ``fmt`` (csv, parquet or json lines),
        streamed by DuckDB, so a result larger than memory is fine."""
        formats = {
            "csv": "FORMAT csv, HEADER true",
            "parquet": "FORMAT parquet",
            "jsonl": "FORMAT json",
        }
        if fmt not in formats:
            raise StoreError(f"format must be one of {', '.join(formats)}, got {fmt!r}")
        path = Path(path)
        with self.reading() as con:
            con.execute(f"COPY ({sql}) TO {sql_string(str(path))} ({formats[fmt]})")
        return path

    def batches(self, sql: str, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """The result of ``sql`` as record batches, without holding it all in memory."""
        with self.reading() as con:
            relation = con.sql(sql)
            # duckdb renamed fetch_record_batch() to to_arrow_reader(); accept both
            fetch = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
            yield from fetch(batch_size)

    def rollouts(
        self,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        *,
        order: bool = True,
        exclude: dict | None = None,
        **filters: Any,
    ) -> pa.Table:
        """Rollouts as a pyarrow Table, in key order, filtered by keywords over their
        columns: ``run.rollouts(model="m", phase="probe", problem_id=[...])``, and
        ``exclude={"phase": "probe"}`` for the negation. ``where`` (an SQL condition, for
        ``fixable query``-style use) is combined with them."""
        where = _where(where, filters, exclude)
        wanted = list(columns) if columns else schema.ROLLOUTS.names
        unknown = [c for c in wanted if c not in schema.ROLLOUTS.names]
        if unknown:
            raise StoreError(
                f"unknown rollout column(s) {', '.join(unknown)}; "
                f"columns are {', '.join(schema.ROLLOUTS.names)}"
            )
        sql = f"SELECT {', '.join(wanted)} FROM rollouts"
        if where:
            sql += f" WHERE {where}"
        if order:
            sql += " ORDER BY " + ", ".join(schema.KEY)
        table = self.query(sql)
        return table.cast(pa.schema([schema.ROLLOUTS.field(c) for c in wanted]))

    def problems(self) -> pa.Table:
        return self.query("SELECT * FROM problems ORDER BY task, problem_id").cast(schema.PROBLEMS)

    def keys(self, where: str | None = None, **filters: Any) -> set[tuple]:
        """The keys (``fixable.schema.KEY`` tuples) present, filtered by keywords over the
        rollout columns as in ``rollouts`` (or an SQL condition ``where``)."""
        where = _where(where, filters, None)
        sql = f"SELECT {', '.join(schema.KEY)} FROM rollouts"
        if where:
            sql += f" WHERE {where}"
        table = self.query(sql)
        return set(zip(*(table.column(c).to_pylist() for c in schema.KEY), strict=True))

    def duplicates(self) -> pa.Table:
        """Keys present more than once, with their count (empty when the run is sound)."""
        key = ", ".join(schema.KEY)
        return self.query(
            f"SELECT {key}, count(*) AS copies FROM rollouts GROUP BY {key} "
            f"HAVING count(*) > 1 ORDER BY {key}"
        )

    def spending(self, model: str, phase: str = "rescue") -> dict[str, dict]:
        """Per setting of ``model`` in ``phase``: problems, rollouts, tokens and
        cost_tokens spent (the rescue budget the manifest records)."""
        table = self.query(
            "SELECT setting, count(DISTINCT problem_id) AS problems, count(*) AS rollouts, "
            "sum(n_tokens) AS tokens, sum(cost_tokens) AS cost_tokens FROM rollouts "
            f"WHERE {_conditions({'model': model, 'phase': phase})} GROUP BY setting "
            "ORDER BY setting"
        )
        return {
            r.pop("setting"): {
                k: (float(v) if k == "cost_tokens" else int(v)) for k, v in r.items()
            }
            for r in table.to_pylist()
        }

    def counts(self) -> pa.Table:
        """Rollouts, problems, correct and error counts per model and phase."""
        return self.query(
            "SELECT model, phase, count(*) AS rollouts, count(DISTINCT problem_id) AS problems, "
            "count(DISTINCT setting) AS settings, CAST(sum(CAST(correct AS INTEGER)) AS BIGINT) "
            "AS correct, CAST(sum(CAST(status = 'error' AS INTEGER)) AS BIGINT) AS errors "
            "FROM rollouts GROUP BY model, phase ORDER BY model, phase"
        )

    # ---------------------------------------------------------------- writing

    def writer(
        self,
        table: str = "rollouts",
        *,
        worker: str | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ) -> ShardWriter:
        return ShardWriter(
            self, table, worker=worker, flush_every=flush_every, flush_seconds=flush_seconds
        )

    def write_problems(self, problems: Iterable, *, worker: str | None = None) -> int:
        """Add problems not yet in the run; returns how many were new.

        A problem id already present with another prompt or answer is refused: the run's
        rollouts of that id would then mean two different problems.
        """
        existing = {(r["task"], r["problem_id"]): r for r in self.problems().to_pylist()}
        rows = []
        for p in problems:
            row = {
                "task": p.task,
                "problem_id": p.id,
                "prompt": p.prompt,
                "answer": p.answer,
                "meta": json.dumps(p.meta, sort_keys=True, default=str),
            }
            old = existing.get((p.task, p.id))
            if old is None:
                rows.append(row)
                existing[(p.task, p.id)] = row
            elif (old["prompt"], old["answer"]) != (row["prompt"], row["answer"]):
                raise StoreError(
                    f"problem {p.id!r} of task {p.task!r} is already in {self.path} with another "
                    f"prompt or answer; problems changed (task options or problem seed?): "
                    f"write to a new --out"
                )
        if rows:
            with self.writer("problems", worker=worker) as w:
                w.extend(rows)
        return len(rows)


def _schema_mismatch(found: pa.Schema, expected: pa.Schema) -> str:
    problems = []
    for field in expected:
        if field.name not in found.names:
            problems.append(f"column {field.name!r} missing")
        elif not found.field(field.name).type.equals(field.type):
            problems.append(
                f"column {field.name!r} is {found.field(field.name).type}, expected {field.type}"
            )
    return "; ".join(problems)


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _dump(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()


def _check_same_model(path: Path, model: str, known: dict, identity: dict, sampling: dict) -> None:
    """Refuse sampling ``model`` again with other weights, precision, backend or sampling
    parameters than those the manifest records for it (``known``)."""
    old_hashes, new_hashes = _hashes(known["identity"]), _hashes(identity)
    changed = [k for k in old_hashes.keys() & new_hashes.keys() if old_hashes[k] != new_hashes[k]]
    if changed:
        raise StoreError(
            f"model {model!r} in {path} was sampled from other weights "
            f"({changed[0]} changed its sha256); new rollouts would mix two models: "
            f"write to a new --out"
        )
    old_dtype, new_dtype = known["identity"].get("dtype"), identity.get("dtype")
    if old_dtype is not None and new_dtype is not None and old_dtype != new_dtype:
        raise StoreError(
            f"model {model!r} in {path} was sampled in {old_dtype}, now {new_dtype}: "
            f"the precision changes the rollouts; resume with dtype={old_dtype} or "
            f"write to a new --out"
        )
    if known["identity"].get("backend") != identity["backend"]:
        raise StoreError(
            f"model {model!r} in {path} was sampled with backend "
            f"{known['identity'].get('backend')!r}, now {identity['backend']!r}: "
            f"write to a new --out"
        )
    for name, value in sampling.items():
        if known["sampling"].get(name) != value:
            raise StoreError(
                f"model {model!r} in {path} was sampled with {name}="
                f"{known['sampling'].get(name)!r}, now {value!r}: use the same value "
                f"to resume, or write to a new --out"
            )


def _hashes(identity: Any, prefix: str = "") -> dict[str, str]:
    """Every file hash in a (nested) identity, by its path in the identity."""
    out: dict[str, str] = {}
    if isinstance(identity, dict):
        for key, value in identity.items():
            if key == "weights_sha256" and isinstance(value, dict):
                out.update({f"{prefix}{name}": h for name, h in value.items()})
            else:
                out.update(_hashes(value, f"{prefix}{key}/"))
    return out


def _conditions(filters: dict, exclude: dict | None = None) -> str | None:
    """The SQL condition of keyword filters over rollout columns: ``column=value``
    (equality) or ``column=[values]`` (any of them); ``exclude`` the same, negated."""
    parts = []
    for negate, given in ((False, filters), (True, exclude or {})):
        for column, value in given.items():
            if column not in schema.ROLLOUTS.names:
                raise StoreError(
                    f"unknown rollout column {column!r} to filter on; "
                    f"columns are {', '.join(schema.ROLLOUTS.names)}"
                )
            if isinstance(value, (list, tuple, set, frozenset)):
                values = sorted(value, key=str)
                if not values:
                    parts.append("TRUE" if negate else "FALSE")
                    continue
                listed = ", ".join(_literal(v) for v in values)
                parts.append(f"{column} {'NOT IN' if negate else 'IN'} ({listed})")
            elif value is None:
                parts.append(f"{column} IS {'NOT ' if negate else ''}NULL")
            else:
                parts.append(f"{column} {'<>' if negate else '='} {_literal(value)}")
    return " AND ".join(parts) or None


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    return sql_string(str(value))


def _where(where: str | None, filters: dict, exclude: dict | None) -> str | None:
    conditions = [c for c in (where, _conditions(filters, exclude)) if c]
    return " AND ".join(f"({c})" for c in conditions) or None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the run (manifest updates, migrations)."""
    with open(directory / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ShardWriter:
    """Buffers rows of one table and writes them as new shards: every ``flush_every`` rows,
    every ``flush_seconds``, and on close — also when closed by an exception, since every
    buffered row is a finished rollout worth keeping."""

    def __init__(
        self,
        run: Run,
        table: str = "rollouts",
        *,
        worker: str | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ):
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        if flush_every < 1:
            raise StoreError(f"flush_every must be at least 1, got {flush_every}")
        self.run, self.table, self.schema = run, table, TABLES[table]
        self.worker = worker or default_worker()
        if any(c in self.worker for c in "/\\\0") or self.worker.startswith("."):
            raise StoreError(f"worker name {self.worker!r} must not contain '/' or start with '.'")
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.directory = run.path / table
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shards: list[Path] = []
        self.rows_written = 0
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        run.clean_temporaries()

    def append(self, row: dict) -> None:
        self._buffer.append(row)
        self._maybe_flush()

    def extend(self, rows: Iterable[dict]) -> None:
        self._buffer.extend(rows)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered rows as one new shard (nothing when the buffer is empty)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        path = self.directory / f"{self.worker}-{uuid.uuid4().hex[:12]}.parquet"
        write_shard(table, path)
        self.shards.append(path)
        self.rows_written += table.num_rows
        log.debug("wrote %d %s to %s", table.num_rows, self.table, path)
        self._buffer = []
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_runs(directory: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """Run directories at or under ``directory`` (those holding a manifest.json)."""
    root = Path(directory)
    if (root / MANIFEST).is_file():
        return [root]
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if depth > max_depth:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if (child / MANIFEST).is_file():
                found.append(child)
            elif child.name not in TABLES and child.name != QUARANTINE:
                walk(child, depth + 1)

    walk(root, 1)
    return found

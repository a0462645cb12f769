"""CLI mistakes and a full disk: one line, exit 2, checked before anything is written."""

from __future__ import annotations

import errno

import pytest

from fakes import FakeBackend
from fixable import store
from fixable.cli.main import main
from fixable.registry import backends


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch):
    backends.names()
    monkeypatch.setitem(backends._factories, "fake", FakeBackend)


@pytest.fixture
def fixable(capsys):
    def invoke(*args) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def one_line_error(code, err) -> bool:
    return code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_unknown_backend_option_on_the_command_line(tmp_path, fixable):
    code, _, err = fixable("sample", "-m", "x", "-B", "batchsize=3", "--out", tmp_path / "r")
    assert one_line_error(code, err), err
    assert "unknown option 'batchsize' of backend 'organism'" in err
    assert "Did you mean: batch_size?" in err
    assert not (tmp_path / "r").exists()


def test_unknown_backend_option_in_a_run_file_names_its_line(tmp_path, fixable):
    path = tmp_path / "run.toml"
    path.write_text('model = "x"\nbackend = "fake"\n\n[backend_options]\nrefrence = false\n')
    code, _, err = fixable("sample", "-c", path, "--out", tmp_path / "r")
    assert one_line_error(code, err), err
    assert f"{path}, line 5" in err and "Did you mean: reference?" in err
    assert not (tmp_path / "r").exists()


def test_a_run_file_that_is_not_utf8(tmp_path, fixable):
    path = tmp_path / "run.toml"
    path.write_bytes(b'# runs\nmodel = "caf\xe9"\n')
    code, _, err = fixable("sample", "-c", path, "--out", tmp_path / "r")
    assert one_line_error(code, err), err
    assert f"{path}, line 2: not UTF-8" in err and "0xe9" in err


def test_a_single_difficulty_is_a_list_of_one(tmp_path, fixable):
    code, _, err = fixable("sample", "-m", "x", "-T", "difficulties=9", "--out", tmp_path / "r")
    assert one_line_error(code, err), err
    assert "chains difficulty must be in [1, 5], got 9" in err
    from fixable.tasks import get_task

    assert get_task("chains", difficulties=4).difficulties == (4,)
    assert get_task("chains", subdists="arith").subdists == ("arith",)


def test_every_model_is_checked_before_a_run_directory_exists(tmp_path, fixable):
    checkpoint = tmp_path / "ckpt"  # what the organism backend accepts as a path
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"")
    code, _, err = fixable(
        "sample", "--model", checkpoint, "--model", "no-such-model", "--out", tmp_path / "r"
    )
    assert one_line_error(code, err), err
    assert "no-such-model" in err
    assert not (tmp_path / "r").exists()


def test_a_full_disk_names_the_directory_and_leaves_no_temporary(tmp_path, fixable, monkeypatch):
    write_table = store.pq.write_table

    def full(table, where, **kwargs):  # the problems fit; the first rollouts shard does not
        if "/rollouts/" not in where.name:
            return write_table(table, where, **kwargs)
        where.write(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", full)
    run = tmp_path / "r"
    code, _, err = fixable(
        "sample", "-m", "a", "-b", "fake", "-n", "3", "--k", "2", "--out", run, "-q"
    )
    assert one_line_error(code, err), err
    assert f"no space left on the device holding {run / 'rollouts'}" in err
    assert "re-run the same command" in err
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_quarantine_message_reads_right(tmp_path):
    from pathlib import Path

    entry = store.QuarantinedShard(Path("a.parquet"), Path("q/a.parquet"), "bad", None)
    assert "an unknown number of its rows are missing" in str(entry)
    entry = store.QuarantinedShard(Path("a.parquet"), Path("q/a.parquet"), "bad", 12)
    assert "its 12 rows are missing" in str(entry)

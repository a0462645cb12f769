"""A command that needs an optional extra the user has not installed says which, in one line.

Each optional library is made unimportable (``sys.modules[name] = None``, which makes
``import name`` raise ``ModuleNotFoundError`` as if it were absent) and the command that
needs it is run through the CLI's entry point: exit status 2, one line on stderr naming
the extra and the ``pip install`` that brings it, no traceback, nothing on stdout.
"""

from __future__ import annotations

import sys

import pytest

from fixable.cli.main import main
from fixable.extras import EXTRAS, MissingExtraError, as_missing_extra, require


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def hide(monkeypatch, *modules: str) -> None:
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def assert_one_line_naming(err: str, words: list[str]) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


SAMPLE = ["sample", "-n", "2", "--k", "1", "--max-tokens", "4", "-q"]


@pytest.mark.parametrize(
    "hidden, argv, words",
    [
        (
            ("transformers",),
            ["--backend", "hf", "-m", "{tmp}", "-B", "reference=none"],
            ["fixable[hf]", "pip install"],
        ),
        (
            ("httpx",),
            [
                "--backend",
                "openai",
                "-m",
                "some-model",
                "-B",
                "base_url=http://127.0.0.1:9/v1",
                "--no-reference-scores",
            ],
            ["fixable[openai]", "pip install"],
        ),
        (("ray",), ["-m", "llama-micro", "--ray", "local"], ["fixable[ray]", "pip install"]),
        (("vllm",), ["--backend", "vllm", "-m", "{tmp}"], ["vllm", "install"]),
        (
            ("datasets",),
            ["-m", "llama-micro", "--task", "gsm8k"],
            ["fixable[datasets]", "pip install"],
        ),
    ],
    ids=["hf", "openai", "ray", "vllm", "datasets"],
)
def test_sample_without_an_extra_says_which_to_install(
    tmp_path, capsys, monkeypatch, hidden, argv, words
):
    hide(monkeypatch, *hidden)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(capsys, *SAMPLE, *argv, "--out", str(tmp_path / "run"))
    assert code == 2, (out, err)
    assert_one_line_naming(err, words)


def test_math_verifier_without_its_extra(tmp_path, capsys, monkeypatch):
    from fixable.tasks.math500 import _math_verify

    hide(monkeypatch, "math_verify")
    with pytest.raises(Exception) as info:
        _math_verify()
    assert "fixable[bench]" in str(info.value) and "pip install" in str(info.value)


def test_serve_without_its_extra(capsys, monkeypatch):
    import fixable.serve

    def loaded_before_checking(*a, **k):
        raise AssertionError("models loaded before the server's libraries were checked")

    monkeypatch.setattr(fixable.serve, "build_models", loaded_before_checking)
    hide(monkeypatch, "fastapi", "uvicorn")
    code, out, err = run_cli(capsys, "serve", "llama-micro", "--port", "8000")
    assert code == 2, (out, err)
    assert_one_line_naming(err, ["fixable[serve]", "pip install"])


def test_require_names_the_extra(monkeypatch):
    hide(monkeypatch, "gguf")
    with pytest.raises(MissingExtraError, match=r"pip install 'fixable\[real\]'"):
        require("gguf")
    with pytest.raises(ValueError):
        require("numpy")  # a core dependency, not an extra


def test_an_installed_library_with_a_broken_dependency_is_not_called_missing(monkeypatch):
    # transformers is installed with the dev extra: an import failing *inside* it is a
    # broken installation and keeps its traceback; hidden, it is a missing extra
    pytest.importorskip("transformers")
    inside = ModuleNotFoundError("No module named 'transformers.foo'", name="transformers.foo")
    assert as_missing_extra(inside) is None
    assert as_missing_extra(ModuleNotFoundError("x", name="numpy")) is None  # not optional
    hide(monkeypatch, "transformers")
    assert isinstance(as_missing_extra(inside), MissingExtraError)


def test_every_extra_is_declared_in_pyproject():
    """Each optional library is a requirement of the extra its message tells users to install."""
    import re
    from pathlib import Path

    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    distribution = {"math_verify": "math-verify"}
    for module, (extra, _) in EXTRAS.items():
        names = {re.split(r"[\[<>=!;~ ]", r, maxsplit=1)[0].lower() for r in declared[extra]}
        assert distribution.get(module, module) in names, (module, extra, names)

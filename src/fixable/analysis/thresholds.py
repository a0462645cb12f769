"""Frozen default router thresholds per model family, with their provenance (SPEC §3.6).

The signature rule needs thresholds, and protocol v2 forbids computing them on the failures
being routed. ``router_thresholds.json`` (shipped in the package) holds, per model family,
the medians of the three features over the failures of *calibration models* — the zoo's
seed-1 models, probed on problems the demo and the study never use (``problem_seed`` 1) —
and where they came from: the command that produced them (``scripts/freeze_router_thresholds.py``),
the models, problems, K, the number of failures, the git revision and the date.

``default_router(model, family)`` returns a ``SignatureRouter`` with those constants and
its calibration models declared, so the analysis refuses (or flags) evaluating it on them,
and ``fixable rescue`` works out of the box for a zoo model; a family without shipped
thresholds returns None (the caller then says how to give thresholds).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from fixable.analysis.routing import ROUTER_FEATURES, SignatureRouter
from fixable.errors import DataError

logger = logging.getLogger(__name__)

DEFAULTS_FILE = Path(__file__).with_name("router_thresholds.json")
FORMAT, FORMAT_VERSION = "fixable-router-thresholds", 1


def load_defaults(path: str | Path = DEFAULTS_FILE) -> dict:
    """The shipped thresholds document (``{"families": {family: {...}}, ...}``); empty
    when none is shipped."""
    path = Path(path)
    if not path.is_file():
        return {"families": {}}
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise DataError(f"{path} is not a router-thresholds file (format {doc.get('format')!r})")
    return doc


def default_router(model: str, family: str | None, *, path: str | Path = DEFAULTS_FILE):
    """The frozen signature router for ``family`` (None when no thresholds are shipped for
    it), with its calibration models declared."""
    entry = (load_defaults(path).get("families") or {}).get(family or "")
    if not entry:
        return None
    router = SignatureRouter(
        thresholds=dict(entry["thresholds"]), calibration_models=tuple(entry["calibration_models"])
    )
    if model in entry["calibration_models"]:
        logger.warning(
            "%s is one of the calibration models of the shipped %s thresholds", model, family
        )
    return router


def freeze_thresholds(
    features: pd.DataFrame, family_of: Mapping[str, str], *, provenance: dict
) -> dict:
    """Per family: the medians of the three features over its models' failures (a
    ``failure_features`` table), with the models, failure counts and ``provenance``."""
    families: dict[str, dict] = {}
    frame = features.assign(family=features["model"].map(family_of))
    if frame["family"].isna().any():
        missing = sorted(set(frame.loc[frame["family"].isna(), "model"]))
        raise DataError(f"no family for models {missing}")
    for family, part in frame.groupby("family"):
        router = SignatureRouter().fit(part)
        families[str(family)] = {
            "thresholds": {f: float(router.thresholds_[f]) for f in ROUTER_FEATURES},
            "calibration_models": sorted(set(part["model"])),
            "n_failures": int(len(part)),
            "n_failures_per_model": {
                m: int(n) for m, n in part["model"].value_counts().sort_index().items()
            },
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "how": "medians of answer dispersion, trajectory uncertainty and reference drift over "
        "the failures (0 of K probe rollouts correct) of the calibration models",
        "provenance": provenance,
        "families": families,
    }


def write_defaults(doc: dict, path: str | Path = DEFAULTS_FILE) -> Path:
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


__all__ = [
    "DEFAULTS_FILE",
    "default_router",
    "freeze_thresholds",
    "load_defaults",
    "write_defaults",
]

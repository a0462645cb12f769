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
``FamilyRouter`` routes failures of several families, each with its family's frozen
thresholds (what ``AnalysisConfig(frozen_router="shipped")`` evaluates, e.g. on the
planted testbed, whose models none of the calibration models are).
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


class FamilyRouter:
    """The signature rule with each family's frozen thresholds from a thresholds document
    (default: the shipped one). Routes a table of failures that has a ``family`` column;
    declares the calibration models of every family, so the analysis refuses (or flags)
    evaluating it on them."""

    def __init__(self, doc: Mapping | None = None, toward_reference: str = "checkpoint"):
        doc = load_defaults() if doc is None else doc
        families = doc.get("families") or {}
        if not families:
            raise DataError("the router-thresholds document holds no family")
        self.thresholds = {f: dict(e["thresholds"]) for f, e in sorted(families.items())}
        self.calibration_models = tuple(
            sorted(m for e in families.values() for m in e.get("calibration_models", ()))
        )
        self.toward_reference = toward_reference
        self.provenance = doc.get("provenance") or {}

    def route(self, features: pd.DataFrame, settings) -> list[str]:
        if "family" not in features:
            raise DataError("routing by family needs a 'family' column (from the model cards)")
        routed = pd.Series(index=features.index, dtype=object)
        for family, part in features.groupby(features["family"].astype(str), sort=False):
            if family not in self.thresholds:
                raise DataError(
                    f"no frozen router thresholds for family {family!r} (have "
                    f"{', '.join(self.thresholds)}); calibrate them with "
                    "scripts/freeze_router_thresholds.py"
                )
            router = SignatureRouter(self.thresholds[family], self.toward_reference)
            routed.loc[part.index] = router.route(part, settings)
        return routed.to_list()

    def __repr__(self) -> str:
        shown = "; ".join(
            f"{f}: " + ", ".join(f"{k}={v:.3g}" for k, v in t.items())
            for f, t in self.thresholds.items()
        )
        return f"FamilyRouter(frozen thresholds per family: {shown})"


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
    "FamilyRouter",
    "default_router",
    "freeze_thresholds",
    "load_defaults",
    "write_defaults",
]

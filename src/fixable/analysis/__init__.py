"""The recoverability analysis: rescue labels, regimes, routing, topography, transfer, and
deployment-time rescue (definitions and the ``analysis.json`` structure in docs/analysis.md).

``analyze`` runs everything over rollout tables; the estimators follow scikit-learn's
conventions; ``rescue`` is the deployment-time loop for one problem.
"""

from fixable.analysis.labels import LabelThresholds, label_counts, label_failures, rescue_matrix
from fixable.analysis.pipeline import Analysis, AnalysisConfig, analyze, load_runs, write_analysis
from fixable.analysis.regimes import RegimeClusterer, agreement, bootstrap_stability
from fixable.analysis.rescue import RescueResult, rescue
from fixable.analysis.routing import (
    BestFixedIntervention,
    Outcomes,
    Router,
    SignatureRouter,
    evaluate_routing,
    route_failures,
)
from fixable.analysis.topography import MethodClassifier, TextBaselineClassifier, topography
from fixable.analysis.transfer import transfer
from fixable.features import failure_features, failure_texts

__all__ = [
    "Analysis",
    "AnalysisConfig",
    "BestFixedIntervention",
    "LabelThresholds",
    "MethodClassifier",
    "Outcomes",
    "RegimeClusterer",
    "RescueResult",
    "Router",
    "SignatureRouter",
    "TextBaselineClassifier",
    "agreement",
    "analyze",
    "bootstrap_stability",
    "evaluate_routing",
    "failure_features",
    "failure_texts",
    "label_counts",
    "label_failures",
    "load_runs",
    "rescue",
    "rescue_matrix",
    "route_failures",
    "topography",
    "transfer",
    "write_analysis",
]

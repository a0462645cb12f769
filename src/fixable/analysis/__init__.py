"""The recoverability analysis: rescue labels, regimes, routing, topography, transfer, and
deployment-time rescue (definitions and the ``analysis.json`` structure in docs/analysis.md).

``analyze`` runs everything over rollout tables under protocol v2 (SPEC §3: labels from
the labelling part, scores from the scoring part, router frozen on calibration models,
topography on held-out models, every headline beside its control); the estimators follow
scikit-learn's conventions; ``rescue`` is the deployment-time loop for one problem;
``sequential_labels`` certifies uncertain labels by sampling them further.
``evaluate_routing`` and ``topography_by_problem`` are protocol v1, kept for tests.
"""

from fixable.analysis.evaluation import RoutingData, calibration_groups, evaluate_frozen_routing
from fixable.analysis.labels import (
    LabelThresholds,
    label_counts,
    label_failures,
    rescue_matrix,
    select_part,
)
from fixable.analysis.pipeline import Analysis, AnalysisConfig, analyze, load_runs, write_analysis
from fixable.analysis.regimes import RegimeClusterer, agreement, bootstrap_stability
from fixable.analysis.rescue import RescueResult, rescue
from fixable.analysis.result import FORMAT_VERSION, read_analysis
from fixable.analysis.routing import (
    BestFixedIntervention,
    Outcomes,
    Router,
    SignatureRouter,
    evaluate_routing,
    route_failures,
)
from fixable.analysis.sequential import SequentialReport, sequential_labels
from fixable.analysis.thresholds import default_router
from fixable.analysis.topography import (
    MethodClassifier,
    TextBaselineClassifier,
    seed_as_label,
    topography,
    topography_by_problem,
)
from fixable.analysis.transfer import transfer
from fixable.features import failure_features, failure_texts

__all__ = [
    "FORMAT_VERSION",
    "RoutingData",
    "SequentialReport",
    "calibration_groups",
    "default_router",
    "evaluate_frozen_routing",
    "read_analysis",
    "select_part",
    "sequential_labels",
    "topography_by_problem",
    "seed_as_label",
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

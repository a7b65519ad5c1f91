"""Per-sample analysis: findings as pure array functions, detectors, maps.

Findings take numpy arrays (labels `(N,)`, probabilities `(N, K)`, embeddings `(N, D)`)
and return scores or masks; ``analyze`` runs every registered detector over one run's
``AnalysisInputs`` and returns the JSON-ready findings.
"""

from dataloupe.analysis._base import (
    UNDEFINED,
    AnalysisInputs,
    Detector,
    FindingRow,
    SampleArrays,
    get_detector,
    list_detectors,
    register_detector,
)
from dataloupe.analysis._clusters import cluster_embeddings, cluster_stats
from dataloupe.analysis._crossfit import crossfit_probs
from dataloupe.analysis._detectors import DetectorResult, analyze, finding_rows, with_crossfit
from dataloupe.analysis._knn import knn, l2_normalize, neighbour_votes
from dataloupe.analysis._maps import METHODS, reduce
from dataloupe.analysis._label_issues import (
    LabelIssues,
    estimate_num_label_errors,
    find_label_issues,
    knn_label_probs,
    label_issue_scores,
)
from dataloupe.analysis._neighbours import (
    content_hashes,
    duplicate_threshold,
    leakage_pairs,
    near_duplicate_pairs,
    outlier_mask,
    outlier_scores,
)
from dataloupe.analysis._pseudo import precision_threshold, pseudo_label
from dataloupe.analysis._run_api import analyze_run, export_run_csv, label_suspicion, reduce_run
from dataloupe.analysis._trust import model_trust
from dataloupe.analysis._taxonomy import error_taxonomy, load_real_labels, real_accuracy, topk_accuracy

__all__ = [
    "model_trust",
    "METHODS", "reduce", "analyze_run", "export_run_csv", "label_suspicion", "reduce_run", "UNDEFINED", "AnalysisInputs", "Detector", "DetectorResult", "FindingRow", "analyze", "finding_rows", "with_crossfit",
    "error_taxonomy", "load_real_labels", "real_accuracy", "topk_accuracy", "LabelIssues", "SampleArrays",
    "cluster_embeddings", "duplicate_threshold", "cluster_stats", "content_hashes", "crossfit_probs",
    "estimate_num_label_errors", "find_label_issues", "get_detector", "knn", "knn_label_probs", "l2_normalize", "neighbour_votes",
    "label_issue_scores", "leakage_pairs", "list_detectors", "near_duplicate_pairs",
    "outlier_mask", "outlier_scores", "precision_threshold", "pseudo_label", "register_detector",
]

"""How far a run's findings can be trusted: the model's quality stated next to them.

A weak model (a few epochs, near chance) makes every finding look certain: it disagrees
with many correct labels at high scores. The dashboard and the report show this verdict
next to the findings and warn when the model is too weak.

Example:
    >>> model_trust(0.64, 2, labeled=100, label_issues=45)["weak"]
    True
"""

from __future__ import annotations

# A model is weak when it closes less than this share of the gap between chance and 100%
# (2 classes: below 80% top-1; 10 classes: below 64%).
MIN_GAP_CLOSED = 0.6
# ... or when it calls more than this share of the labeled rows label issues.
MAX_ISSUE_SHARE = 0.2


def model_trust(val_top1: float | None, num_classes: int, *, labeled: int | None = None,
                label_issues: int | None = None) -> dict:
    """Verdict on whether the findings of a model with this validation top-1 are trustworthy.

    Args:
        val_top1: the run's best validation top-1 in [0, 1] (None: unknown).
        num_classes: K, for the chance level 1/K.
        labeled: labeled rows of the analysed table; label_issues: how many were flagged.

    Returns:
        ``{"val_top1", "chance", "weak" (bool), "reasons" (list[str]), "message"}``.
    """
    k = max(int(num_classes or 0), 1)
    chance = 1.0 / k
    reasons = []
    if val_top1 is None:
        reasons.append("the run has no validation accuracy")
    else:
        need = chance + MIN_GAP_CLOSED * (1 - chance)
        if val_top1 < need:
            reasons.append(f"val top-1 {100 * val_top1:.1f}% is below {100 * need:.0f}% "
                           f"(chance is {100 * chance:.0f}%)")
    if labeled and label_issues is not None and label_issues > MAX_ISSUE_SHARE * labeled:
        reasons.append(f"it disputes {label_issues} of {labeled} labels ({100 * label_issues / labeled:.0f}%)")
    acc = "unknown" if val_top1 is None else f"{100 * val_top1:.1f}%"
    if reasons:
        msg = (f"model val top-1 {acc}: too weak to trust its findings — " + "; ".join(reasons)
               + ". Findings may describe the model, not the data: train longer or check them by hand.")
    else:
        msg = f"model val top-1 {acc} (chance {100 * chance:.0f}%)"
    return {"val_top1": val_top1, "chance": chance, "weak": bool(reasons), "reasons": reasons, "message": msg}

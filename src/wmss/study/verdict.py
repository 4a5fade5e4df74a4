"""The answer to "is it the weak model, or just sharpening?" by the rule of docs/controls.md, fixed
before the runs it reads: one reference arm (WMSS with the real weak model) against its controls
(synthetic weak logits, matched SFT), each difference pooled over the seeds both ran and paired over
problems, on test accuracy (higher is better) and on held-out gold-solution NLL per token (lower is
better).

- ``sharpening``: some control does as well: its accuracy difference (control − reference) is ≥ 0
  and its NLL is not worse with an interval that excludes zero;
- ``weak-specific``: the reference beats every control on accuracy or on NLL with an interval that
  excludes zero, and no control beats it on either with an interval that excludes zero;
- ``not separable at this scale``: neither.

Where an arm has no held-out NLL, the rule reads accuracy alone and says so.
"""

from __future__ import annotations

from typing import Any

SHARPENING = "sharpening"
WEAK_SPECIFIC = "weak-specific"
NOT_SEPARABLE = "not separable at this scale"


def control_reading(accuracy: dict, nll: dict | None) -> dict[str, Any]:
    """One control against the reference. ``accuracy`` and ``nll``: control − reference as
    ``{delta, low, high, seeds}`` (accuracy as a fraction, NLL in nats per token); ``nll`` None when
    either arm lacks the held-out NLL."""
    nll_worse = nll is not None and nll["low"] > 0  # the control's NLL is higher, interval above zero
    nll_better = nll is not None and nll["high"] < 0
    return {
        "accuracy": accuracy,
        "nll": nll,
        "does_as_well": accuracy["delta"] >= 0 and not nll_worse,
        "reference_better": accuracy["high"] < 0 or nll_worse,
        "control_better": accuracy["low"] > 0 or nll_better,
    }


def decide(readings: dict[str, dict]) -> dict[str, Any]:
    """The rule's answer from each control's :func:`control_reading` (by control name), with the
    controls that decided it."""
    if not readings:
        raise ValueError("the verdict needs at least one control with a finished seed")
    as_well = [name for name, r in readings.items() if r["does_as_well"]]
    if as_well:
        return {"answer": SHARPENING, "because": as_well}
    if all(r["reference_better"] and not r["control_better"] for r in readings.values()):
        return {"answer": WEAK_SPECIFIC, "because": list(readings)}
    undecided = [n for n, r in readings.items() if not r["reference_better"] or r["control_better"]]
    return {"answer": NOT_SEPARABLE, "because": undecided}

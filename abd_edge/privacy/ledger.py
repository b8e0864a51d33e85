"""The privacy ledger: one entry per learned task, carried in the learner's history and every bundle.

Entries are JSON-safe (an infinite epsilon is the string "inf") and say,
in words, what they cover. Each task's local images are a separate
dataset and later tasks see them only through released models, so each
entry's epsilon is the guarantee for *its* images (parallel composition);
someone whose images went into several private updates is covered by the
sum of those epsilons (basic composition). A task learned without DP has no
guarantee at all, whatever later updates claim.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

NOT_COVERED = (
    "the set of class labels and names an update adds (choosing the label space from the data is not private); "
    "the number of local images; the normalisation statistics of the first task (computed on the server)"
)


def epsilon_of(entry: Mapping[str, Any]) -> float:
    """An entry's epsilon as a float (inf for a non-private update)."""
    eps = entry.get("epsilon", "inf")
    return math.inf if eps is None else float(eps)


def non_private_entry(task_index: int, classes: Sequence[int], labels: Sequence[Any], n_images: int, *,
                      bn: str = "trained", first: bool = False) -> dict[str, Any]:
    what = "learned on the server from scratch" if first else "a non-private update"
    return {
        "update": task_index, "private": False, "epsilon": "inf", "delta": None, "accountant": None,
        "noise_multiplier": 0.0, "steps": None, "sample_rate": None, "max_grad_norm": None,
        "n_images": n_images, "classes": list(classes), "labels": list(labels), "bn": bn,
        "claim": f"no differential-privacy guarantee for the images of classes {list(labels)} ({what})",
    }


def private_entry(task_index: int, classes: Sequence[int], labels: Sequence[Any], n_images: int,
                  fields: Mapping[str, Any], earlier: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    entry = {"update": task_index, "n_images": n_images, "classes": list(classes), "labels": list(labels), **fields}
    if not fields.get("private"):
        entry["claim"] = (f"no differential-privacy guarantee for the images of classes {list(labels)} "
                          f"(a non-private update with BatchNorm frozen)")
        return entry
    void = [lab for e in earlier if not e.get("private") for lab in e.get("labels", [])]
    claim = (f"({epsilon_of(entry):.3g}, {entry['delta']:g})-differential privacy for each of this update's "
             f"{n_images} local images (classes {list(labels)}), for the released model and everything computed "
             f"from it (dreams, later updates). Not covered: {NOT_COVERED}")
    if void:
        claim += (f". Earlier tasks were not private: no total claim holds for classes {void}, whose images "
                  f"carry no guarantee")
    entry["claim"] = claim
    entry["void_for_labels"] = void
    return entry


def ledger_from_history(history: Iterable[Any]) -> list[dict[str, Any]]:
    """The ledger of a learner's history; reports written before the ledger existed count as non-private."""
    out: list[dict[str, Any]] = []
    for r in history:
        if getattr(r, "privacy", None):
            out.append(dict(r.privacy))
        else:
            out.append(non_private_entry(r.task_index, r.class_indices, r.labels_added, r.n_images, first=r.task_index == 0))
    return out


def summarize(ledger: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the ledger adds up to: per-update epsilons, the classes without any guarantee, the worst case."""
    private = [e for e in ledger if e.get("private")]
    void = [lab for e in ledger if not e.get("private") for lab in e.get("labels", [])]
    eps = [epsilon_of(e) for e in private]
    return {
        "private_updates": [e.get("update") for e in private],
        "epsilon_per_update": eps,
        "max_epsilon": max(eps) if eps else "inf",
        "epsilon_if_same_people_in_every_private_update": sum(eps) if eps else "inf",
        "labels_without_guarantee": void,
        "total_claim": ("none: every task was learned without differential privacy" if not private else
                        "per private update, for its own local images (see each entry's claim)"
                        + (f"; void for labels {void} (learned without differential privacy)" if void else "")),
        "not_covered": NOT_COVERED,
    }

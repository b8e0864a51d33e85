"""``abd-edge audit``: every privacy audit of a saved learner's or a bundle's latest update.

The attacks and scans are the engine's (:mod:`abd_edge.privacy.audit`); this
module finds the model before and after the update in a learner directory or
a bundle, runs them all and writes ``audit.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from abd_edge.bundle_format import LEARNER_DIR
from abd_edge.bundle_store import BundleStore
from abd_edge.privacy.config import PrivacyConfig
from abd_edge.data.adapters import as_labeled_images
from abd_edge.learner import Learner
from abd_edge.privacy.audit import dream_memorisation, membership_audit, persistence_scan


def _load_target(path: Path, base: str | Path | None) -> tuple[Learner, Learner | None, list[Path]]:
    """A learner directory, or a bundle (its current version; the parent version, if kept, is the base)."""
    store = BundleStore(path)
    if store.exists():
        version, manifest = store.read()
        target = Learner.load(store.version_dir(version) / LEARNER_DIR, device="cpu")
        parent = manifest.get("parent_version")
        if base is None and parent and parent in store.versions():
            base = store.version_dir(parent) / LEARNER_DIR
    else:
        target = Learner.load(path, device="cpu")
    return target, (Learner.load(base, device="cpu") if base is not None else None), [path]


def audit_path(
    target: str | Path, members: Any, non_members: Any, *, base: str | Path | None = None, shadows: int = 4,
    n_dreams: int = 256, out_dir: str | Path = "runs/audit", seed: int = 0,
) -> dict[str, Any]:
    """Every audit of the latest update of a saved learner or bundle; writes audit.json and the closest-pairs PNG.

    ``members`` are the update's local images, ``non_members`` held-out
    images of the same classes (anything ``Learner.learn_new_classes``
    accepts). The calibrated attack needs the model before the update:
    ``base``, or the parent version kept in the bundle.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learner, base_learner, roots = _load_target(Path(target), base)
    mem, non = as_labeled_images(members), as_labeled_images(non_members)
    entry = learner.privacy_ledger[-1] if learner.history else {}
    privacy = PrivacyConfig.from_dict(entry["config"]) if entry.get("config") else None
    doc: dict[str, Any] = {"target": str(target), "update": entry, "base": str(base) if base else None}
    doc["membership"] = membership_audit(learner, mem, non, base=base_learner, shadows=shadows if base_learner else 0,
                                         privacy=privacy, seed=seed)
    if base_learner is None:
        doc["membership"]["note"] = "no base model (the model before the update): calibrated attack skipped; pass --base"
    if learner.generator is not None:
        doc["dream_memorisation"] = dream_memorisation(learner, mem, non, n_dreams=n_dreams, seed=seed, png=out / "closest_dreams.png")
    doc["persistence_scan"] = {"roots": [str(r) for r in roots], "files_with_member_bytes": persistence_scan(roots, mem.images)}
    (out / "audit.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc

"""Bundle sizes: updatable (the default: the generator once), updatable with generator.onnx too, serving-only.

    python benchmarks/bundle_sizes.py --learner runs/learner --out benchmarks/results/bundle-sizes.json

Exports the saved learner three times with int8 (updatable, the default;
updatable with ``generator_onnx=True``, the generator carried twice;
``serve_only=True``), splits ``learner/weights.safetensors`` into
classifier, generator and generator optimizer state by tensor name, writes
JSON and prints a table. Sizes depend on the architecture, not on how well
the learner was trained (the int8 file is kept only if it agrees with fp32).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from abd_edge import Learner
from abd_edge.environment import environment
from abd_edge.export import export_bundle


def weight_split(path: Path) -> dict[str, float]:
    from safetensors import safe_open

    split = {"classifier": 0, "generator": 0, "generator_optimizer": 0, "other": 0}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            part = ("generator_optimizer" if key.startswith("generator_opt.") else "generator" if key.startswith("generator.")
                    else "classifier" if key.startswith("model.") else "other")
            split[part] += t.numel() * t.element_size()
    return {k: v / 2**20 for k, v in split.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learner", action="append", required=True, help="saved learner directory (repeatable)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="abd-sizes-") as work:
        for i, path in enumerate(a.learner):
            learner = Learner.load(path, device="cpu")
            row = {"generator": learner.config.generator, "classes": learner.num_classes,
                   "keep_optimizer": learner.config.dream.keep_optimizer}
            variants = (("updatable", {}), ("updatable_with_generator_onnx", {"generator_onnx": True}),
                        ("serving", {"serve_only": True}))
            for kind, options in variants:
                serve_only = options.get("serve_only", False)
                info = export_bundle(learner, Path(work) / f"{i}-{kind}", quantize="int8", show_progress=False, **options)
                row[kind] = {"total_mb": info["bytes"] / 2**20,
                             "files_mb": {k: v / 2**20 for k, v in sorted(info["files"].items())},
                             "int8_included": info["quantization"]["included"],
                             "int8_agreement": info["quantization"]["agreement"]["top1_agreement"]}
                if not serve_only:
                    row[kind]["learner_weights_mb"] = weight_split(Path(info["path"]) / "learner" / "weights.safetensors")
            rows[path] = row
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(with_torch=True), "learners": rows}, indent=2))
    print(f"{'learner':<34}{'generator':<13}{'updatable MB':>13}{'  of it: gen weights / gen Adam':>33}"
          f"{'+ gen.onnx MB':>15}{'serving MB':>12}{'int8':>6}")
    for path, r in rows.items():
        u, w = r["updatable"], r["updatable"]["learner_weights_mb"]
        print(f"{path:<34}{r['generator']:<13}{u['total_mb']:>13.2f}{w['generator']:>24.2f} / {w['generator_optimizer']:.2f}"
              f"{r['updatable_with_generator_onnx']['total_mb']:>15.2f}{r['serving']['total_mb']:>12.2f}"
              f"{'yes' if r['serving']['int8_included'] else 'no':>6}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

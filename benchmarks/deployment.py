"""Deployment benchmark: bundle size, ONNX Runtime vs torch latency, int8 accuracy and speed-up.

    python benchmarks/deployment.py --learner runs/learner-cifar10-abd \
        --dataset cifar10 --data-root ../shared/data/cifar10_jpeg.npz \
        --out benchmarks/results/deployment-cifar10.json

Exports the saved learner as a bundle (fp32 classifier, int8 classifier
calibrated on dreamed images, generator), then measures in one process:
latency of the classifier at batch 1 and 64 through ONNX Runtime (fp32 and
int8) next to torch eager on the same uint8 NHWC contract; accuracy of fp32
and int8 on the test images of the learned classes; the bundle's size with
the generator's share; and the size of the compact generator for the same
input. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from abd_edge import Learner, runtime
from abd_edge.apps.bench import load_benchmark_data
from abd_edge.environment import environment
from abd_edge.export import DeployedClassifier, export_bundle, export_generator
from latency import onnx_latency, torch_latency  # benchmarks/latency.py (this script's directory is on sys.path)
from abd_edge.models import build_generator, count_parameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learner", required=True, help="a directory written by Learner.save (e.g. bench --save-learner)")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-root")
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes (the device's cores)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    learner = Learner.load(a.learner, device="cpu")
    c, h, w = learner.input_shape
    work = Path(tempfile.mkdtemp(prefix="abd-deploy-"))
    try:
        t = time.perf_counter()
        info = export_bundle(learner, work / "bundle", quantize="int8")
        export_s = time.perf_counter() - t
        vdir = Path(info["path"])
        files = {k: v / 2**20 for k, v in info["files"].items()}
        # learner/weights.safetensors holds classifier + generator + its Adam state; split it by tensor names
        from safetensors import safe_open

        split = {"classifier": 0, "generator": 0, "generator_adam": 0, "other": 0}
        with safe_open(str(vdir / "learner" / "weights.safetensors"), "pt") as f:
            for key in f.keys():
                n = f.get_slice(key).get_shape()
                nbytes = int(np.prod(n)) * 4 if n else 4
                part = ("generator_adam" if key.startswith("generator_opt.") else "generator" if key.startswith("generator.")
                        else "classifier" if key.startswith("model.") else "other")
                split[part] += nbytes
        split_mb = {k: v / 2**20 for k, v in split.items()}
        total_mb = info["bytes"] / 2**20
        generator_total = files.get("generator.onnx", 0.0) + split_mb["generator"] + split_mb["generator_adam"]

        deployed = DeployedClassifier.from_learner(learner)
        lat = {}
        for bs in (1, 64):
            lat[f"ort_fp32_b{bs}"] = onnx_latency(vdir / "classifier.onnx", bs, (h, w, c), threads=a.threads, repeats=a.repeats)
            lat[f"ort_int8_b{bs}"] = onnx_latency(vdir / "classifier.int8.onnx", bs, (h, w, c), threads=a.threads, repeats=a.repeats)
            lat[f"torch_b{bs}"] = torch_latency(deployed, bs, (h, w, c), threads=a.threads, repeats=a.repeats)

        _, test = load_benchmark_data(a.dataset, a.data_root)
        test = test.select_labels(learner.registry.labels)
        x = test.images
        if x.dtype != torch.uint8:
            x = (x * 255).round().to(torch.uint8)
        x = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
        acc = {}
        for name, int8 in (("fp32", False), ("int8", True)):
            dev = runtime.open(work / "bundle", int8=int8, threads=a.threads)
            acc[name] = dev.evaluate(x, test.labels)
        agree = float(np.mean(runtime.open(work / "bundle").predict_proba(x).argmax(1)
                              == runtime.open(work / "bundle", int8=True).predict_proba(x).argmax(1)))

        compact = build_generator("abd_compact", h, c)
        paper = build_generator("abd", h, c)
        compact_info = export_generator(compact, work / "compact.onnx")
        result = {
            "learner": a.learner,
            "classes": learner.num_classes,
            "environment": environment(with_torch=True),
            "threads": a.threads,
            "export_seconds": export_s,
            "bundle_mb": total_mb,
            "files_mb": files,
            "learner_weights_mb": split_mb,
            "generator_share": generator_total / total_mb,
            "latency": lat,
            "accuracy": {**acc, "int8_minus_fp32": acc["int8"] - acc["fp32"], "top1_agreement": agree, "n_test": len(test)},
            "int8_speedup": {f"b{bs}": lat[f"ort_fp32_b{bs}"]["median_ms"] / lat[f"ort_int8_b{bs}"]["median_ms"] for bs in (1, 64)},
            "generators": {
                "abd": {"parameters": count_parameters(paper), "onnx_mb": files.get("generator.onnx")},
                "abd_compact": {"parameters": count_parameters(compact), "onnx_mb": compact_info["bytes"] / 2**20},
            },
            "parity": info["parity"],
            "quantization": info["quantization"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))

    print(f"bundle: {total_mb:.1f} MB, generator share {100 * result['generator_share']:.0f}% "
          f"(generator.onnx {files.get('generator.onnx', 0):.1f} MB, its weights {split_mb['generator']:.1f} MB "
          f"and Adam state {split_mb['generator_adam']:.1f} MB in learner/), classifier.onnx {files['classifier.onnx']:.2f} MB, "
          f"int8 {files['classifier.int8.onnx']:.2f} MB")
    print(f"\n{'classifier, ' + str(a.threads) + ' threads':<28}{'batch 1 ms':>12}{'batch 64 ms':>13}{'img/s @64':>11}")
    for key, label in (("torch", "torch eager"), ("ort_fp32", "ONNX Runtime fp32"), ("ort_int8", "ONNX Runtime int8")):
        b1, b64 = lat[f"{key}_b1"], lat[f"{key}_b64"]
        print(f"{label:<28}{b1['median_ms']:>12.2f}{b64['median_ms']:>13.1f}{b64['images_per_s']:>11.0f}")
    print(f"\naccuracy on {len(test)} test images: fp32 {100 * acc['fp32']:.2f}%, int8 {100 * acc['int8']:.2f}% "
          f"({100 * (acc['int8'] - acc['fp32']):+.2f} points), top-1 agreement {100 * agree:.1f}%")
    print(f"int8 speed-up: {result['int8_speedup']['b1']:.2f}x at batch 1, {result['int8_speedup']['b64']:.2f}x at batch 64")
    print(f"generators: paper {count_parameters(paper) / 1e6:.2f} M params; compact {count_parameters(compact) / 1e6:.2f} M params, "
          f"{compact_info['bytes'] / 2**20:.1f} MB ONNX")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

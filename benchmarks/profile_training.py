"""Kept for the commands quoted in earlier results: the profiler now lives in the package.

    abd-edge bench --profile --dataset cifar10 --data-root cifar10_jpeg.npz --threads 1
    python -m abd_edge.apps.profiling --data cifar10_jpeg.npz --threads 1   # every option
"""

from abd_edge.apps.profiling import main

if __name__ == "__main__":
    raise SystemExit(main())

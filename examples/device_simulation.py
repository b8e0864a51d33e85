"""Class-incremental device simulation (the README's main job); same as ``abd-edge simulate``.

A server learns the base classes and exports an ONNX bundle. A simulated
device then receives new classes in steps, each only as in-memory data,
learns them through ``abd_edge.runtime`` with dreamed replay, and is
evaluated through ONNX Runtime on every class seen so far, next to a device
that never updates and one that fine-tunes without replay.

    python examples/device_simulation.py                       # embedded digits, a few minutes on 2 cores
    python examples/device_simulation.py --compare-engine      # also the same updates in the training engine
    python examples/device_simulation.py --dataset cifar10 --data-root PATH/cifar10_jpeg.npz
"""

import sys

from abd_edge.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))

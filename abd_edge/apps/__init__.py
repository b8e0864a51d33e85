"""Applications built on the engine, export and runtime: the benchmark, the device
simulation, the privacy audit front end and the ``abd-edge`` command.

This is the top layer: nothing in the engine (``abd_edge``), ``abd_edge.export``
or ``abd_edge.runtime`` imports it (tools/check_imports.py enforces that).
"""

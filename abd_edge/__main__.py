"""``python -m abd_edge``: the same as the ``abd-edge`` command."""

import sys

from .apps.cli import main

sys.exit(main())

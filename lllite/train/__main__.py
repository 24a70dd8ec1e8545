"""``python -m lllite.train``: see :mod:`lllite.train.cli`."""
import sys

from .cli import main

sys.exit(main())

"""``python -m workers.cli``: the ``tracer`` command."""

import sys

from . import main

sys.exit(main())

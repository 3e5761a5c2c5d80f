"""``python -m sidecar`` is the ``integration-sidecar`` command."""

import sys

from sidecar.cli import main

sys.exit(main())

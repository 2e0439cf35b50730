"""``python -m gateway`` is ``compound-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())

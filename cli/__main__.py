"""``python -m cli`` is ``compound-gateway``."""

import sys

from cli.main import main

sys.exit(main())

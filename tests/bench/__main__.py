"""`python -m tests.bench [--quick] [--scenario N ...] [--json FILE]`: see tests/bench/__init__.py."""

import sys

from tests.bench.cli import main

sys.exit(main())

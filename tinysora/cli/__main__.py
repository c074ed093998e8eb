"""``python -m tinysora.cli`` is the ``tinysora`` command too (tests and benches spawn it)."""

import sys

from tinysora.cli import main

sys.exit(main())

"""``python -m tinysora`` is the ``tinysora`` command (and ``torchrun -m tinysora ...``)."""

import sys

from tinysora.cli import main

sys.exit(main())

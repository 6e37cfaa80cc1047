"""``python -m kdlib``: the same as the ``kdlib`` command (:mod:`kdlib.cli`)."""

import sys

from kdlib.cli import main

sys.exit(main())

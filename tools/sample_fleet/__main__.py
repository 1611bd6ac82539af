"""``python -m tools.sample_fleet``: write a sample fleet (see ``--help``)."""

import sys

from tools.sample_fleet import main

sys.exit(main())

"""``python -m pipelines.sample_fleet``: write a sample fleet (see ``--help``)."""

import sys

from pipelines.sample_fleet import main

sys.exit(main())

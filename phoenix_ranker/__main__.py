"""`python -m phoenix_ranker`: the `phoenix-ranker` command."""

import sys

from phoenix_ranker.cli import main

sys.exit(main())

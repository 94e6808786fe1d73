"""`python -m spinenet ...`: see `common.cli`."""

import spinenet
from common.cli import main

raise SystemExit(main(spinenet))

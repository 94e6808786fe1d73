"""`python -m kneeoa ...`: see `common.cli`."""

import kneeoa
from common.cli import main

raise SystemExit(main(kneeoa))

"""`python -m deepra ...`: see `common.cli`."""

import deepra
from common.cli import main

raise SystemExit(main(deepra))

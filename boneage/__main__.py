"""`python -m boneage ...`: see `common.cli`."""

import boneage
from common.cli import main

raise SystemExit(main(boneage))

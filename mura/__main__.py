"""`python -m mura ...`: see `common.cli`."""

import mura
from common.cli import main

raise SystemExit(main(mura))

"""``python -m msm``: the same as the ``msm`` console script."""

import sys

from msm.cli import main

sys.exit(main())

"""``python -m widthlab.cli``: the `widthlab` command."""

import sys

from widthlab.cli import main

sys.exit(main())

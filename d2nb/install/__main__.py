"""``python -m d2nb.install``: detectron2 at the pinned commit, only when it is missing."""

import sys

from d2nb.install import main

sys.exit(main())

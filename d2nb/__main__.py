import sys

from d2nb.cli import main

sys.exit(main())

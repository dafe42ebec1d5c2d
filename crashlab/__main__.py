import sys

from crashlab.cli import main

sys.exit(main())

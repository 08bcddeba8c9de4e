import sys

from qeval.cli import main

sys.exit(main())

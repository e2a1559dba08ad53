import sys

from vpnsplit.cli import main

sys.exit(main())

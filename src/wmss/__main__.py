import sys

from wmss.cli import main

sys.exit(main())

import sys

from wsm.cli import main

sys.exit(main())

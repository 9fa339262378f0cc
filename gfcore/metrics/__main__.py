import sys

from gfcore.metrics.cli import main

sys.exit(main())

"""python -m gfcore COMMAND ... (same as the `gfcore` console script)."""
import sys

from gfcore.cli import main

sys.exit(main())

"""``python -m rln_verified`` is ``rln-verify``."""

import sys

from rln_verified.cli import main

if __name__ == "__main__":
    sys.exit(main())

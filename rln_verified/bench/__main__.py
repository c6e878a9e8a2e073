"""``python -m rln_verified.bench``: run the ratio gate."""

import sys

from rln_verified.bench._gate import main

sys.exit(main())

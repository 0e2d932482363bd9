"""``python -m lesiondiff.cli``."""

import sys

from . import main

sys.exit(main())

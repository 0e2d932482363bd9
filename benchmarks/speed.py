"""Speed benchmark; the same as ``lesiondiff bench speed``. Usage: python benchmarks/speed.py [--sizes 64 128 256]"""

import sys

from lesiondiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "speed", *sys.argv[1:]]))

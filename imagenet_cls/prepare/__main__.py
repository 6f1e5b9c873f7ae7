"""``python -m imagenet_cls.prepare SOURCE DEST``: see ``--help``."""

import sys

from imagenet_cls.prepare.sources import main

if __name__ == "__main__":
    sys.exit(main())

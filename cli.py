"""Entry point: ``python cli.py {fit,validate,test,predict,serve} ...`` (see ``python cli.py --help``)."""

import sys

from imagenet_cls.cli import main

if __name__ == "__main__":
    sys.exit(main())

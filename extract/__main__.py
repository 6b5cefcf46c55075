"""`python -m extract`: see extract/run.py."""
import sys

from extract.run import main

if __name__ == '__main__':
    sys.exit(main())

"""`python -m train`: see train/main.py."""
import sys

from train.main import main

if __name__ == '__main__':
    sys.exit(main())

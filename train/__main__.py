"""`python -m train`: see train/main.py."""
import sys

try:
    from train.main import main
except KeyboardInterrupt:  # Ctrl-C while torch loads (seconds on a busy node): a traceback, and nothing had started
    print('\ninterrupted while starting: nothing was done', file=sys.stderr)
    sys.exit(130)

if __name__ == '__main__':
    sys.exit(main())

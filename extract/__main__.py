"""`python -m extract`: see extract/run.py."""
import sys

try:
    from extract.run import exit_cli, main
except KeyboardInterrupt:  # Ctrl-C while torch loads (seconds on a busy node): a traceback, and nothing had started
    print('\ninterrupted while starting: nothing was done', file=sys.stderr)
    sys.exit(130)

if __name__ == '__main__':
    exit_cli(main())

"""`python -m extract`: see extract/run.py."""
from extract.run import exit_cli, main

if __name__ == '__main__':
    exit_cli(main())

"""``python -m liplayers``: the command line (see :mod:`liplayers.cli`)."""
from .cli import main

if __name__ == "__main__":
    main()

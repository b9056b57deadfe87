"""Allow `python -m moa_search`."""

from moa_search.cli import main

if __name__ == "__main__":
    main()

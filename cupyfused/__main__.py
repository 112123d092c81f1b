"""``python -m cupyfused {info,check,bench}``: see ``cupyfused.cli``."""

from cupyfused.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m actionrec`` runs the command-line interface."""

from actionrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

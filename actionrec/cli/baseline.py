"""Sub-commands of this family (filled in by their issue)."""


def register(subparsers):
    """Add this module's sub-commands to the ``actionrec`` parser."""

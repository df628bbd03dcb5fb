"""``infoplane`` command: entry point (subcommands are added as they land)."""
import sys


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="infoplane", description="Information planes of neural networks.")
    parser.add_subparsers(dest="command")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line layer of infoplane (installed as ``infoplane.cli``)."""

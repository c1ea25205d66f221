"""Placeholder for the `evaluate` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'evaluate' command is not implemented yet")

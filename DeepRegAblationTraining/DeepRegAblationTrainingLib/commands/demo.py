"""Placeholder for the `demo` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'demo' command is not implemented yet")

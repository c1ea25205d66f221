"""Placeholder for the `register` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'register' command is not implemented yet")

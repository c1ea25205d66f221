"""Placeholder for the `sweep` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'sweep' command is not implemented yet")

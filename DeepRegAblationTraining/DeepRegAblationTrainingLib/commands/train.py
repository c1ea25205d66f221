"""Placeholder for the `train` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'train' command is not implemented yet")

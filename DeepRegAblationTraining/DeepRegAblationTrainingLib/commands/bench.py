"""Placeholder for the `bench` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'bench' command is not implemented yet")

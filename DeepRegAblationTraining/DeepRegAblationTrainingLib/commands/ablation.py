"""Placeholder for the `ablation` command (being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("the 'ablation' command is not implemented yet")

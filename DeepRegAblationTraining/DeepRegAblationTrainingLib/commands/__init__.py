"""One module per `deepreg-ablation` command: each has `add_arguments(parser)` and `run(args) -> int`.

A command defines its arguments, makes one call into the library and prints the outcome; the
arguments several commands share are in :mod:`.arguments`. Commands do not import each other.
"""

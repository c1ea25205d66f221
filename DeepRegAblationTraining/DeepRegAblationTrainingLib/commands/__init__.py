"""One module per `deepreg-ablation` command: each has `add_arguments(parser)` and `run(args) -> int`."""

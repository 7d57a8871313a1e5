"""One module per ``raykube`` sub-command: ``add_arguments(parser)`` and ``run(args)``.

Keep imports of torch/ray inside ``run`` so the CLI starts fast and the light commands
work with only the core install.
"""

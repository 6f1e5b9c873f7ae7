"""``python cli.py serve ...``: LightningCLI's subcommands are fixed, so ``main`` hands ``serve`` to this parser.

The options are :func:`imagenet_cls.serve.server.serve`'s typed arguments (jsonargparse), documented by its
docstring in ``python cli.py serve --help``.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser


def serve_parser() -> ArgumentParser:
    """The parser of ``cli.py serve`` (``--config`` there is the model's YAML, not a config of these options)."""
    from imagenet_cls.serve.server import serve

    parser = ArgumentParser(prog="cli.py serve", description=serve.__doc__.splitlines()[0], default_env=False)
    parser.add_function_arguments(serve, as_positional=False)
    return parser


def serve_main(args: list[str]) -> int:
    """Parse ``args`` (after ``serve``) and run the server until SIGTERM or Ctrl+C."""
    from imagenet_cls.serve.server import serve

    parser = serve_parser()
    config = parser.parse_args(args)
    return serve(**config.as_dict())

"""The one private LightningCLI method we rely on: fails loudly when Lightning renames it or stops calling it."""

import inspect

import pytest
from lightning.pytorch.cli import LightningCLI

from imagenet_cls.cli import ImageNetCLI


def test_lightning_still_builds_each_subcommand_parser_through_the_adapted_method():
    parameters = list(inspect.signature(LightningCLI._prepare_subcommand_parser).parameters)
    assert parameters[:3] == ["self", "klass", "subcommand"], parameters
    parsers = {}

    class Recording(ImageNetCLI):
        def add_subcommand_arguments(self, parser, subcommand):
            super().add_subcommand_arguments(parser, subcommand)
            parsers[subcommand] = parser

    with pytest.raises(SystemExit):
        Recording(args=["fit", "--help"])
    assert list(parsers) == ["fit", "validate", "test", "predict"]
    defaults = {name: parser.get_defaults() for name, parser in parsers.items()}
    assert "test_after_fit" in defaults["fit"] and "early_stopping" in defaults["fit"]
    assert "writer" in defaults["predict"] and defaults["predict"]["return_predictions"] is False
    assert "writer" not in defaults["validate"] and "test_after_fit" not in defaults["test"]


def test_no_module_outside_the_adapter_imports_a_private_lightning_name():
    import pathlib
    import re

    package = pathlib.Path(__file__).resolve().parents[1] / "imagenet_cls"
    private = re.compile(r"from lightning[\w.]* import [^\n]*\b_\w+|lightning[\w.]*\._\w+")
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "lightning_adapter.py" and private.search(path.read_text())
    ]
    assert offenders == []

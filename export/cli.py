"""``resnet-export``: export a model to ONNX / FP16 ONNX / TensorRT and gate it on parity."""

from __future__ import annotations

import click

from .cli_common import (DefaultGroup, model_options, one_line_errors, print_family_table,
                         resolve_model_name)


@click.group(cls=DefaultGroup, default_command="build",
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export a ResNet and prove the artifact gives the eager model's logits."""


@main.command("build")
@model_options(default="resnet50")
@click.option("--list-models", is_flag=True, expose_value=False, is_eager=True,
              callback=print_family_table, help="Print the model family table and exit.")
@one_line_errors
def build(depth: int | None, model: str | None) -> None:
    """Export a ResNet and prove the artifact gives the eager model's logits.

    \b
    resnet-export --depth 50 --fmt onnx        export ResNet-50
    resnet-export --list-models                the family with parameters and MACs
    resnet-export verify DIR                   re-run the parity gate on existing artifacts
    """
    name = resolve_model_name(depth, model) if (depth or model) else "resnet50"
    raise click.ClickException(f"exporting {name}: export formats are not available yet")

"""``resnet-train``: train a ResNet on the embedded digits data or the user's own data."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train a ResNet and write a checkpoint that resnet-export understands."""
    raise click.ClickException("training is not available yet")

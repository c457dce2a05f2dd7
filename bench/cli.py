"""``resnet-bench``: latency percentiles and throughput per backend and batch size."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark the ResNet family on every backend this machine has."""
    raise click.ClickException("benchmarking is not available yet")

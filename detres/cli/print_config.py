"""``detres print-config --config C [k=v ...]``: the resolved config tree."""
from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from detres.cli.common import plain_text
from detres.config.args import add_config_args, load_config_from_args


def main(argv: list[str] | None = None) -> int:
    """Print the fully resolved, validated config as YAML."""
    parser = argparse.ArgumentParser(prog="detres print-config", description=plain_text(__doc__))
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = load_config_from_args(args)
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    return 0

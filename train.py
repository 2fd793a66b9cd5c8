"""headstart's entry point: `python train.py [group=option ...] [key=value ...]`. See README.md."""

import hydra
from omegaconf import DictConfig

from headstart.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from headstart.cli import run  # imported here so `--help` and `--cfg` stay fast

    return run(cfg)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from headstart.cli import normalize_argv, print_help, wants_help

    sys.argv = normalize_argv(sys.argv)
    if wants_help(sys.argv):  # headstart's help: Hydra's takes seconds to list the groups
        print_help(Path(__file__).parent / "conf", sys.argv)
        sys.exit(0)
    main()

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

    from headstart.cli import normalize_argv

    sys.argv = normalize_argv(sys.argv)
    main()

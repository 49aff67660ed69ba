"""``--help`` without the config-group listings that the help templates do not show.

Hydra's ``--help`` lists every config group of the app and of Hydra itself before it fills the
template, copying its whole config repository once per group, whether or not the template shows
the lists; that is most of the command's time (docs/results/command_timings.md). The templates in
``conf/`` show only the composed config (``$CONFIG``) and the project's own list of options (the
``mnist_bench_groups`` resolver), so a plain ``--help`` with overrides is answered here through
Hydra's compose API, with the text Hydra prints for these templates (``hydra.verbose`` aside:
Hydra's own ``--help`` also logs its debug lines). Any other command line, or a template that
shows more, goes to Hydra as usual.
"""

from __future__ import annotations

import os
import string
import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

HELP_FLAGS = ("--help", "-h")


def help_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of a command line that asks for ``--help`` and holds nothing but
    overrides besides; None for any other command line."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return None
    overrides = [arg for arg in argv if arg not in HELP_FLAGS]
    return None if any(arg.startswith("-") for arg in overrides) else overrides


def help_text(conf_dir: str, config_name: str, overrides: list[str]) -> str | None:
    """What Hydra's ``--help`` prints for this config and overrides; None where the template
    shows more than the composed config. Raises Hydra's error where the config does not
    compose."""
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name, overrides, return_hydra_config=True)
    try:
        return string.Template(cfg.hydra.help.template).substitute(
            CONFIG=OmegaConf.to_yaml(_without_hydra(cfg)))
    except (KeyError, ValueError):  # $FLAGS_HELP, ${hydra:...}, any other: Hydra's to fill in
        return None


def _without_hydra(cfg: DictConfig) -> DictConfig:
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    return job


def hydra_message(err: Exception) -> str:
    """The error as Hydra prints a config that does not compose: its message, the OmegaConf
    error behind it (which names the key, the value and what is allowed), the hint."""
    cause = err.__cause__
    reason = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
    return (f"{err}{reason}\n\n"
            "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.")


def print_help(conf_dir: str, config_name: str, argv: list[str]) -> bool:
    """Print ``--help`` for ``argv`` as Hydra would; False where Hydra has to answer. A config
    that does not compose ends the process with Hydra's message (where Hydra's ``--help``
    shows a traceback)."""
    overrides = help_overrides(argv)
    if overrides is None:
        return False
    try:
        text = help_text(conf_dir, config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(hydra_message(err))
    if text is not None:
        print(text)
    return text is not None

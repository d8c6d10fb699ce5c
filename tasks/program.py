"""The `fpm-fleet` command: the same tasks as `fab` in this checkout, from any directory.

It is Fabric's own program (same core options, same FABRIC_* environment and config files)
with fpm-fleet's collection built in, so no fabfile is searched for; a fabric.yaml in the
current directory is read as `fab` reads the one beside its fabfile.
"""

from __future__ import annotations

import os
from importlib import metadata

from fabric import Config, Executor
from fabric.main import Fab

from tasks import collection


class FleetProgram(Fab):  # type: ignore[misc]  # fabric ships no type hints
    """Fab with the project config taken from the current directory (the app's repository),
    since a built-in collection has no fabfile directory to take it from."""

    def parse_collection(self) -> None:
        super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()


def version() -> str:
    try:
        return metadata.version("fpm-fleet")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def program() -> Fab:
    return FleetProgram(name="fpm-fleet", binary="fpm-fleet", binary_names=["fpm-fleet"],
                        version=version(), namespace=collection(),
                        executor_class=Executor, config_class=Config)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`[project.scripts]` in pyproject.toml)."""
    program().run(argv)

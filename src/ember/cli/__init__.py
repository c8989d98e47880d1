"""The ``ember`` command.

``main`` is the click group; each module of this package defines the commands of one
area and is registered at the bottom of this file. Commands import what they need
inside their function bodies, so ``ember --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from ember import __version__


@click.group()
@click.version_option(__version__, prog_name="ember", message="%(prog)s %(version)s")
def main() -> None:
    """Ember: run Ray programs on every core of this machine or across a cluster."""


# Command modules register themselves on ``main`` when imported (one line per area).
from ember.cli import autoscaler as _autoscaler  # noqa: E402,F401
from ember.cli import cluster as _cluster  # noqa: E402,F401
from ember.cli import job as _job  # noqa: E402,F401
from ember.cli import state as _state  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())

"""Ray's ``ray.ray_constants`` path (an alias of ``ember._private.ray_constants``)."""

from ember._private.ray_constants import *  # noqa: F403
from ember._private.ray_constants import __all__  # noqa: F401

"""``python -m ember.raylet``: run a node daemon."""

from ember.raylet.main import main

main()

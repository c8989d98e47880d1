"""``python -m ember.gcs``: run the control service."""

from ember.gcs.main import main

main()

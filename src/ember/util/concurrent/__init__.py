"""``ember.util.concurrent``: ``concurrent.futures`` on the cluster (see ``futures``)."""

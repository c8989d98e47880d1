"""Autoscaling: nodes that come and go with demand (Ray's ``ray.autoscaler``).

* ``cluster_config``: the cluster YAML (Ray's keys), checked.
* ``scaling``: the pure decision core (demand + nodes + config -> launch/terminate).
* ``node_provider``: the provider interface; ``fake_multinode``: nodes as local processes.
* ``monitor``: the service on the head that runs the decisions (``python -m ember.autoscaler``).
* ``sdk``: ``request_resources``.
"""

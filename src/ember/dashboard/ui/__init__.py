"""The web UI's server side: the documents each view polls, built once for every open page.

``modules/ui.py`` adds the routes; this package holds what they serve:
``documents.py`` (one builder per view), ``cluster_source.py`` (what the control service
and the node daemons say), ``history.py`` (the last minutes of cluster use, for the
Overview charts), ``shared_document.py`` (one build per interval for every open page,
answered ``304 Not Modified`` when unchanged) and ``log_files.py`` (reading, following and
searching the session's log files).
"""

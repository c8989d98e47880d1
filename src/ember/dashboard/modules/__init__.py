"""Route modules of the head's HTTP server; ``ember.dashboard.server.MODULES`` lists them."""

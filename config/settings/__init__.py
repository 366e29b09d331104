"""Settings profiles: ``embedded`` (default), ``production``, ``test``, ``test_postgres``."""

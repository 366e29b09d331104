"""``run_fake_upstream`` and ``rotate_encryption_keys``."""

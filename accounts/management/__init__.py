"""The accounts app's management commands."""

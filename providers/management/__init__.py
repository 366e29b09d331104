"""The providers app's management commands."""

"""The test suite: pytest-django, a folder per app (see tests/conftest.py for the people)."""

"""Tests of the core app."""

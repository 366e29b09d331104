"""Tests of the providers app."""

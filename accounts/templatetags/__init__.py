"""Template filters shared by every page."""

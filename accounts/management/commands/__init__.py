"""``seed_demo``: the demo organization and login that ``make run`` prints."""

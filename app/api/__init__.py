"""HTTP routes, one router per resource; shared dependencies live in deps.py."""

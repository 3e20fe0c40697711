"""Nix image toolkit: what the tasks of tasks.py call, in three layers.

The modules at the top of ci/ (and ci/bundles/) are what the toolkit does:
images, caches and bundles, services, VMs, workflows. ci/tools/ holds the
tools they drive, one module per tool; ci/core/ what every layer uses:
errors, the process runner, references, credentials. Imports go one way:
features, then tools, then core.
"""

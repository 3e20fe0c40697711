"""One-off Nix builds in a container of the builder image (nix-base), as
bundle-key, bundle and build-vm run them: what goes in, and what to say when
the builder is missing or its build needs the network."""

from __future__ import annotations

BUILDER_HINT = "build it with `invoke build-base` (offline: `invoke build-base --from-debian`)"

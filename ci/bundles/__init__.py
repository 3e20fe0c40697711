"""Closure bundles and Nix binary caches, on disk and in OCI registries.

A bundle is the seed's closure.tar: what one Nix attribute built (the
runner's `run` script, nix/runner.nix), its whole closure in a file://
binary cache signed with the user's key (cache/), and the `result` link
naming it, in one tarball. It is built in a container of the builder image,
like every Nix build of the toolkit (making). The runner image
(images/runner.Dockerfile) restores a bundle at start, refusing anything its
trusted keys did not sign, and runs it (runner_image).

Bundles, and whole binary cache directories, travel through OCI registries as
artifacts of their own types (artifacts; ci.tools.oras checks every digest).
A binary cache pulled from a registry can serve the image builds as an extra
substituter (substituter), so that a cold machine downloads built paths
instead of building them. keys holds the signing key pair; contents reads
and checks caches and bundles.

Importing this package loads oras-py: the tasks import it only when they need it.
"""

from .artifacts import (
    BUNDLE_MEDIA_TYPE,
    BUNDLE_TITLE,
    BUNDLE_TYPE,
    CACHE_INFO_MEDIA_TYPE,
    CACHE_TYPE,
    NAR_MEDIA_TYPE,
    NARINFO_MEDIA_TYPE,
    PATHS_ANNOTATION,
    SIGNED_BY_ANNOTATION,
    STORE_PATH_ANNOTATION,
    PulledCache,
    pull,
    push_bundle,
    push_cache,
)
from .contents import BundleInfo, CacheContents, NarInfo, cache_directory, check_cache, inspect_bundle, parse_narinfo
from .keys import KeyPair, default_key_name, generate_key, public_keys, read_secret_key
from .making import COMPRESSIONS, make_bundle
from .runner_image import build_runner_image
from .substituter import SUBSTITUTER_CONTEXT, Substituter, substituter

__all__ = [
    "BUNDLE_MEDIA_TYPE", "BUNDLE_TITLE", "BUNDLE_TYPE", "CACHE_INFO_MEDIA_TYPE", "CACHE_TYPE", "COMPRESSIONS",
    "NARINFO_MEDIA_TYPE", "NAR_MEDIA_TYPE", "PATHS_ANNOTATION", "SIGNED_BY_ANNOTATION", "STORE_PATH_ANNOTATION",
    "SUBSTITUTER_CONTEXT", "BundleInfo", "CacheContents", "KeyPair", "NarInfo", "PulledCache", "Substituter",
    "build_runner_image", "cache_directory", "check_cache", "default_key_name", "generate_key", "inspect_bundle",
    "make_bundle", "parse_narinfo", "public_keys", "pull", "push_bundle", "push_cache", "read_secret_key", "substituter",
]

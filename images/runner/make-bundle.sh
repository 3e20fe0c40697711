#!/bin/sh
# Runs in a container of the builder for `invoke bundle` (ci/bundle.py):
# build one attribute, copy its closure into a binary cache signed with the
# user's key, and leave the cache and the result link in /bundle-out, which
# the toolkit tars on the host.
#
#   make-bundle.sh EXPRESSION ATTRIBUTE PACKAGE-SET COMPRESSION
#
# The secret key is the file /bundle-in/secret-key, copied into the
# container: it never appears on a command line or in the log. Progress goes
# to stderr; stdout is the store path built.
set -eu
expression=$1 attribute=$2 pkgs=$3 compression=$4
key=/bundle-in/secret-key
out=/bundle-out
mkdir -p "$out"

nix-build "$expression" --attr "$attribute" --arg pkgs "import $pkgs { }" --out-link "$out/result" >&2
path=$(readlink "$out/result")
if [ ! -x "$path/bin/run" ]; then
  echo "warning: $path has no bin/run: the runner image cannot run this bundle, but it works as a binary cache" >&2
fi

# nix-command: `nix copy` is still experimental in Nix 2.8 (Debian) and later.
nix --extra-experimental-features nix-command copy \
  --to "file://$out/cache?compression=$compression&secret-key=$key" "$path" >&2
rm -f "$key"
# As in the seed: where a bundle's cache is one substituter among others, it
# is asked first (lower numbers first; cache.nixos.org has 40).
echo "Priority: 10" >> "$out/cache/nix-cache-info"
echo "$path"

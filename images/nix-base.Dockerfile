# nix-base: the Nix builder with the pinned package set already in its store.
#
# Built rarely (invoke build-base, or invoke build-cache). By hand:
#   docker build -f images/nix-base.Dockerfile -t nix-base .
#
# BUILDER_IMAGE is any image with Nix on PATH: the official nixos/nix image,
# pinned by digest, or the one `invoke build-base --from-debian` makes from
# Debian packages for machines that cannot reach Docker Hub.
ARG BUILDER_IMAGE=nixos/nix:2.34.7@sha256:bf1d938835ab96312f098fa6c2e9cab367728e0aad0646ee3e02a787c80d8fb8
FROM ${BUILDER_IMAGE}

# The package set, relative to the build context: the pinned nixpkgs
# (nix/nixpkgs), or a stand-in that works offline.
ARG PKGS=nix/nixpkgs

COPY . /src
WORKDIR /src

# Evaluating the package set fetches the pinned nixpkgs into the store, once;
# every later build finds it there by its hash.
RUN nix-instantiate --eval --expr "(import /src/${PKGS} {}).path" > /dev/null

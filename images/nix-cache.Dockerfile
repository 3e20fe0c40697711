# nix-cache: nix-base with the tools and the web closure already built, so
# that everyday builds only build what changed. Rebuilt about once a week.
#
# By hand:
#   docker build -f images/nix-cache.Dockerfile --build-arg BASE_IMAGE=nix-base -t nix-cache .
ARG BASE_IMAGE=nix-base
FROM ${BASE_IMAGE}

ARG PKGS=nix/nixpkgs
ARG IMAGES=nix/images.nix
# NIX_CONFIG: extra Nix settings for the builds below; `--substituter REF`
# sets it to a binary cache pulled from a registry (in the build context,
# /src/.nix-substituter) and the public keys its paths must be signed with.
ARG NIX_CONFIG=

COPY . /src
WORKDIR /src

# skopeo and umoci for the complete flow, on PATH through root's profile.
RUN nix-env --file "${PKGS}" --install --attr skopeo umoci

# The image and its closure. No out-link: the paths stay in this layer's store.
RUN nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr web --attr web-cmd --no-out-link

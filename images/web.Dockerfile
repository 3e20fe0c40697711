# The builder of the web image: it builds the image's Nix expression on top
# of the cache image. Running it writes the image to stdout (the expression
# uses a streaming dockerTools builder), which `invoke build-web` pipes into
# the engine's image load. As long as this file is ARG steps, `COPY .` and
# RUN steps (shell form) on one FROM, build-web runs it without docker build:
# one container of the cache image gets the context where COPY puts it, runs
# the RUN steps with the ARGs in its environment, then /result. Any other
# step, and build-web builds this file with docker build, as by hand.
#
# By hand:
#   docker build -f images/web.Dockerfile --build-arg CACHE_IMAGE=nix-cache -t web-builder .
#   docker run --rm web-builder /result | docker load && docker rmi web-builder
# Another image of an images file: --build-arg IMAGES=nix/services.nix --build-arg ATTR=services
ARG CACHE_IMAGE=nix-cache
FROM ${CACHE_IMAGE}

# One ARG line: each instruction costs the classic builder a container and a commit.
# PKGS: the package set. IMAGES: the images file. ATTR: its image attribute,
# web or services (nix/services.nix). NIX_CONFIG: extra Nix settings;
# `--substituter REF` sets it to a binary cache pulled from a registry (in the
# build context, /src/.nix-substituter) and the keys its paths must be signed with.
# LABELS: OCI labels as JSON for the images file's `labels` argument (source,
# licenses, version: where the image comes from; ci/labels.py).
ARG PKGS=nix/nixpkgs IMAGES=nix/images.nix ATTR=web NIX_CONFIG= LABELS={}

COPY . /src
# cd rather than WORKDIR, and no CMD, for the same reason: the toolkit runs /result.
RUN cd /src && nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr "${ATTR}" --argstr labels "${LABELS}" --out-link /result

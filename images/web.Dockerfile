# The builder of the web image: it builds the image's Nix expression on top
# of the cache image. Running it writes the image to stdout (the expression
# uses a streaming dockerTools builder), which `invoke build-web` pipes into
# the engine's image load, then it removes this builder image.
#
# By hand:
#   docker build -f images/web.Dockerfile --build-arg CACHE_IMAGE=nix-cache -t web-builder .
#   docker run --rm web-builder | docker load && docker rmi web-builder
ARG CACHE_IMAGE=nix-cache
FROM ${CACHE_IMAGE}

ARG PKGS=nix/nixpkgs
ARG IMAGES=nix/images.nix

COPY . /src
WORKDIR /src
RUN nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr web --out-link /result

CMD ["/result"]

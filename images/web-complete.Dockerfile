# The web image in one `docker build`: Nix builds the image in a first stage,
# skopeo turns it into an OCI layout, umoci unpacks that to a root
# filesystem, and the last stage copies it into an empty image.
#
# By hand (after build-cache):
#   docker build -f images/web-complete.Dockerfile --build-arg CACHE_IMAGE=nix-cache -t web .
ARG CACHE_IMAGE=nix-cache
FROM ${CACHE_IMAGE} AS web-builder

# One ARG line: each instruction costs the classic builder a commit. NIX_CONFIG:
# extra Nix settings; `--substituter REF` sets it to a binary cache pulled from
# a registry (/src/.nix-substituter) and the keys its paths must be signed with.
# LABELS: OCI labels as JSON; the toolkit also gives them to this build's last stage.
ARG PKGS=nix/nixpkgs IMAGES=nix/images.nix NIX_CONFIG= LABELS={}

COPY . /src
WORKDIR /src
RUN nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr web --argstr labels "${LABELS}" --out-link /image \
 && nix-build "${IMAGES}" --arg pkgs "import /src/${PKGS} {}" --attr web-cmd --out-link /cmd

# The archive only lives for this step; skopeo cannot read from a pipe.
# mtimes are normalised so that the copied layer is the same every time.
RUN /image > /image.tar \
 && skopeo --policy /src/images/policy.json copy --quiet docker-archive:/image.tar oci:/oci:web \
 && umoci raw unpack --image /oci:web /rootfs \
 && ln -s "$(readlink /cmd)" /rootfs/run \
 && rm -rf /image.tar /oci \
 && find /rootfs -exec touch --no-dereference --date=@1 {} +

FROM scratch
COPY --from=web-builder /rootfs/ /
# Both images files run their server as uid 101 on port 8080.
USER 101:101
EXPOSE 8080
CMD ["/run"]

# The runner image (the seed's hypered/nix): Nix, and an entrypoint that
# restores a closure bundle (`invoke bundle`) into the store at start,
# checking its signatures against the trusted keys, then runs /result/bin/run.
# See images/runner/restore.sh for where the bundle comes from.
#
# Built by `invoke build-runner` on the builder base, nix-base, with the
# configured public key baked in. By hand, with images/ as the build context:
#   docker build -f images/runner.Dockerfile --build-arg BASE_IMAGE=nix-base \
#     --build-arg TRUSTED_PUBLIC_KEYS="$(cat ~/.config/nix-ci/bundle-key.pub)" -t nix-runner images
#   docker run --rm -p 8080:8080 -v "$PWD/build/bundle/closure.tar:/closure.tar:ro" nix-runner
ARG BASE_IMAGE=nix-base
FROM ${BASE_IMAGE}

# skopeo pulls bundles given as BUNDLE_REF: the builder made from Debian
# packages has it; on the nixos/nix builder it comes from the package set
# that nix-base holds.
ARG PKGS=nix/nixpkgs
RUN command -v skopeo > /dev/null || nix-env --file "/src/${PKGS}" --install --attr skopeo

COPY policy.json /etc/nix-ci/policy.json
COPY runner/restore.sh /usr/local/bin/restore-bundle

# The keys a bundle must be signed with (NAME:KEY, space-separated);
# `docker run -e TRUSTED_PUBLIC_KEYS=...` replaces them.
ARG TRUSTED_PUBLIC_KEYS=
ENV TRUSTED_PUBLIC_KEYS=${TRUSTED_PUBLIC_KEYS}

WORKDIR /
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/restore-bundle"]
CMD ["/result/bin/run"]

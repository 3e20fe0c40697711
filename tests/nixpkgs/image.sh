# Builder of the image of the dockerTools.streamLayeredImage stand-in
# (docker-tools.nix), run by busybox sh with set -eu -o pipefail.
#
# Environment: layers (the layer outputs, see layer.sh, in image order),
# configFile, created, architecture, repoTags (JSON), tarAwk (the tar writer).
# Writes to $out: <config digest>.json, manifest.json, archive-head (the
# docker-archive's first entries: the two files) and archive-end (its two
# zero blocks). The layers' archive entries and tarballs go in between.

mkdir -p "$out"
cd "$out"

# The image config; its digest names it.
{
    printf '{"architecture":"%s","config":' "$architecture"
    cat "$configFile"
    printf ',"created":"%s","os":"linux","rootfs":{"diff_ids":[' "$created"
    for layer in $layers; do printf '"sha256:%s"\n' "$(cat "$layer/diff-id")"; done \
        | paste -sd, - | tr -d '\n'
    printf '],"type":"layers"}}'
} > config.json
configName=$(sha256sum config.json | cut -d' ' -f1).json
mv config.json "$configName"

{
    printf '[{"Config":"%s","RepoTags":%s,"Layers":[' "$configName" "$repoTags"
    for layer in $layers; do printf '"%s/layer.tar"\n' "$(cat "$layer/diff-id")"; done \
        | paste -sd, - | tr -d '\n'
    printf ']}]'
} > manifest.json

# The files are read-only in the store; give them that mode now, and owners
# 0:0, as they are archived before the build ends.
chmod 0444 manifest.json "$configName"
printf '%s\n' manifest.json "$configName" | xargs stat -c '%f %s %u %g %N' \
    | awk -v uid="$(id -u)" -v gid="$(id -g)" -v fragment=1 -f "$tarAwk" > archive-head
head -c 1024 /dev/zero > archive-end

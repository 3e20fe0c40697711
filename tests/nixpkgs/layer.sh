# Builder of one layer of the dockerTools.streamLayeredImage stand-in
# (docker-tools.nix), run by busybox sh with set -eu -o pipefail.
#
# Environment: storePaths (the paths of a store layer; empty for the
# customisation layer), contents, extraCommands, fakeRootCommands (of the
# customisation layer), storeDir, tarAwk (the tar writer).
# Writes to $out: layer.tar, diff-id (its sha256) and archive-entry, the tar
# headers of <diff id>/ and <diff id>/layer.tar in the docker-archive: the
# image's stream script writes them and then layer.tar, with no awk.

mkdir -p "$out"

# The store directory and its parents ("nix nix/store"): 0755 root dirs.
storeParents=$(echo "${storeDir#/}" | awk -F/ '{
    for (i = 1; i <= NF; i++) { p = p (i > 1 ? "/" : "") $i; printf "%s ", p }
}')

# addLayer OWNERS: writes the layer of the paths named on stdin, relative to
# the current directory, in that order. OWNERS is the stat format of owner
# and group: '0 0' or '%u %g'.
addLayer() {
    tr '\n' '\0' | xargs -0 -r stat -c "%f %s $1 %N" \
        | awk -v uid="$(id -u)" -v gid="$(id -g)" -v fixed="$storeParents" \
            -f "$tarAwk" > "$out/layer.tar"
    diffId=$(sha256sum "$out/layer.tar" | cut -d' ' -f1)
    size=$(stat -c %s "$out/layer.tar")
    # Every tar.awk entry is padded to 512 bytes: layer.tar needs no padding
    # after it in the docker-archive.
    [ $((size % 512)) -eq 0 ] || { echo "layer.tar: $size bytes, not whole blocks" >&2; exit 1; }
    printf '%s' "$diffId" > "$out/diff-id"
    # Modes as the store gives them (0555, 0444), owners 0:0.
    printf '416d 0 0 0 %s\n8124 %s 0 0 %s/layer.tar\n' "$diffId" "$size" "$diffId" \
        | awk -v headersOnly=1 -f "$tarAwk" > "$out/archive-entry"
}

if [ -n "$storePaths" ]; then
    # A store layer: these paths, owned by root.
    cd /
    { printf '%s\n' $storeParents; for path in $storePaths; do find "${path#/}"; done; } \
        | LC_ALL=C sort | addLayer '0 0'
    exit 0
fi

# The customisation layer: the files of contents linked into /, with real
# directories (as nixpkgs' symlinkJoin does), then the commands.
mkdir root
for content in $contents; do
    [ -d "$content" ] || { echo "contents: $content is not a directory" >&2; exit 1; }
    (cd "$content" && find . -mindepth 1 | sed 's|^\./||') | while IFS= read -r name; do
        if [ -d "$content/$name" ] && [ ! -L "$content/$name" ]; then
            if [ -L "root/$name" ] || { [ -e "root/$name" ] && [ ! -d "root/$name" ]; }; then
                echo "contents: /$name of $content collides with a file of an earlier path" >&2
                exit 1
            fi
            mkdir -p "root/$name"
        elif [ -e "root/$name" ] || [ -L "root/$name" ]; then
            echo "contents: /$name of $content ignored, an earlier path has it" >&2
        else
            ln -s "$content/$name" "root/$name"
        fi
    done
done
(cd root; eval "$extraCommands")
(cd root; eval "$fakeRootCommands")
cd root
find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | addLayer '%u %g'

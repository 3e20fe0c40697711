# Builder of the dockerTools.streamLayeredImage stand-in (docker-tools.nix),
# run by busybox sh with set -eu -o pipefail.
#
# Environment: closure (exportReferencesGraph of roots), roots and configFile
# (helper paths, not layers), contents, created, maxLayers, extraCommands,
# fakeRootCommands, architecture, storeDir, tarAwk (the tar writer).
# Writes to $out: <diff id>/layer.tar per layer, <config digest>.json,
# layer-order (diff ids in image order) and config-name.

mkdir -p "$out"
touch "$out/layer-order"
work=$PWD

# The store directory and its parents ("nix nix/store"): 0755 root dirs.
storeParents=$(echo "${storeDir#/}" | awk -F/ '{
    for (i = 1; i <= NF; i++) { p = p (i > 1 ? "/" : "") $i; printf "%s ", p }
}')

# addLayer OWNERS: makes the image's next layer of the paths named on stdin,
# relative to the current directory, in that order. OWNERS is the stat
# format of owner and group: '0 0' or '%u %g'.
addLayer() {
    tr '\n' '\0' | xargs -0 -r stat -c "%f %s $1 %N" \
        | awk -v uid="$(id -u)" -v gid="$(id -g)" -v fixed="$storeParents" \
            -f "$tarAwk" > "$work/layer.tar"
    diffId=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir -p "$out/$diffId"
    mv "$work/layer.tar" "$out/$diffId/layer.tar"
    echo "$diffId" >> "$out/layer-order"
}

# storeLayer PATH...: a layer holding these store paths, owned by root.
storeLayer() (
    cd /
    { printf '%s\n' $storeParents; for path; do find "${path#/}"; done; } \
        | LC_ALL=C sort | addLayer '0 0'
)

# The store paths of the closure, most referenced first, then by name (the
# part after the hash) and by path. Edges from the helper paths do not count.
awk -v helpers=" $roots $configFile " '
    function helper(p) { return index(helpers, " " p " ") > 0 }
    state == 0 { path = $0; if (!helper(path)) refs[path] += 0; state = 1; next }
    state == 1 { state = 2; next } # the deriver
    state == 2 { left = $0 + 0; state = left > 0 ? 3 : 0; next }
    state == 3 {
        if ($0 != path && !helper(path)) refs[$0]++
        if (--left == 0) state = 0
    }
    END {
        for (p in refs) { n = p; sub(/.*\/[^-]*-/, "", n); print refs[p], n, p }
    }
' closure | sort -k1,1nr -k2,2 -k3,3 | cut -d' ' -f3 > paths

# One layer per store path, but the last store layer takes all the paths left
# when there are more than maxLayers - 1 of them.
count=$(wc -l < paths)
single=$count
if [ "$count" -gt $((maxLayers - 1)) ]; then single=$((maxLayers - 2)); fi
head -n "$single" paths | while read -r path; do storeLayer "$path"; done
if [ "$count" -gt "$single" ]; then storeLayer $(tail -n +$((single + 1)) paths); fi

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
(cd root && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | addLayer '%u %g')

# The image config; its digest names it.
{
    printf '{"architecture":"%s","config":' "$architecture"
    cat "$configFile"
    printf ',"created":"%s","os":"linux","rootfs":{"diff_ids":[' "$created"
    sed 's|.*|"sha256:&"|' "$out/layer-order" | paste -sd, - | tr -d '\n'
    printf '],"type":"layers"}}'
} > config.json
configName=$(sha256sum config.json | cut -d' ' -f1).json
mv config.json "$out/$configName"
echo "$configName" > "$out/config-name"

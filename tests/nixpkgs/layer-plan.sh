# Builder of the layer plan of the dockerTools.streamLayeredImage stand-in
# (docker-tools.nix), run by busybox sh with set -eu -o pipefail.
#
# Environment: closure (exportReferencesGraph of roots), roots and configFile
# (helper paths, not layers), maxLayers.
# Writes to $out the store layers as JSON, in image order: a list of lists of
# store paths, one path per layer but the last, which may have several.

# The store paths of the closure, most popular first, then by name (the part
# after the hash) and by path. As in nixpkgs, a path's popularity counts the
# paths that depend on it, directly or not: shared libraries come first, and
# the paths an application change touches (its page, its config, its start
# script) come last, so that such a change only alters the image's last layers.
# Edges from the helper paths do not count.
awk -v helpers=" $roots $configFile " '
    function helper(p) { return index(helpers, " " p " ") > 0 }
    function ancestors(p,    queue, head, tail, q, n, parts, i, count) {
        split("", seen); head = tail = 0; queue[tail++] = p; count = 0
        while (head < tail) {
            q = queue[head++]
            n = split(referrers[q], parts, " ")
            for (i = 1; i <= n; i++) if (parts[i] != "" && !(parts[i] in seen)) {
                seen[parts[i]] = 1; count++; queue[tail++] = parts[i]
            }
        }
        return count
    }
    state == 0 { path = $0; if (!helper(path)) known[path] = 1; state = 1; next }
    state == 1 { state = 2; next } # the deriver
    state == 2 { left = $0 + 0; state = left > 0 ? 3 : 0; next }
    state == 3 {
        if ($0 != path && !helper(path)) referrers[$0] = referrers[$0] " " path
        if (--left == 0) state = 0
    }
    END {
        for (p in known) { n = p; sub(/.*\/[^-]*-/, "", n); print ancestors(p), n, p }
    }
' closure | sort -k1,1nr -k2,2 -k3,3 | cut -d' ' -f3 > paths

# One layer per store path, but the last store layer takes all the paths left
# when there are more than maxLayers - 1 of them (one goes to customisation).
count=$(wc -l < paths)
single=$count
if [ "$count" -gt $((maxLayers - 1)) ]; then single=$((maxLayers - 2)); fi
awk -v single="$single" '
    NR <= single + 1 { printf "%s[\"%s\"", (NR > 1 ? "]," : "["), $0; next }
    { printf ",\"%s\"", $0 }
    END { print (NR > 0 ? "]]" : "[]") }
' paths > "$out"

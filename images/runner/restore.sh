#!/bin/sh
# The runner image's entrypoint (images/runner.Dockerfile): restore a closure
# bundle made by `invoke bundle` into this container's Nix store, checking
# every path against the trusted keys, then run it.
#
# Where the bundle comes from (the first that is set):
#   BUNDLE_REF=REGISTRY/NAME:TAG   an artifact pushed by `invoke cache-push`, pulled with skopeo
#   BUNDLE=PATH                    a bundle file in the container
#   /closure.tar                   a volume: docker run -v "$PWD/closure.tar:/closure.tar:ro" ...
# Settings:
#   TRUSTED_PUBLIC_KEYS   the public keys (NAME:KEY, space-separated) a bundle must be signed with;
#                         `invoke build-runner` bakes the configured one in
#   BUNDLE_INSECURE=1     no TLS verification for BUNDLE_REF (loopback registries are spoken to in plain HTTP)
#   REGISTRY_USERNAME, REGISTRY_PASSWORD, or REGISTRY_AUTH_FILE: credentials for BUNDLE_REF
#                         (the pair is sent to BUNDLE_REF's registry only, and not at all when
#                         REGISTRY_HOST names another); all of them are unset once the pull is
#                         done, so that what the runner starts never sees them
#
# Then it runs its arguments, /result/bin/run by default (the image's CMD).
#
# Everything is checked before anything enters the store (signatures, NAR
# hashes, completeness), and should the copy still fail, the paths it added
# are removed: a refused bundle leaves the store as it was. The last line
# says why, and the exit code what kind of failure it was:
#   2  no bundle, an unreadable one, or one that cannot be pulled
#   3  a bundle that is not trusted: unsigned, signed by another key, modified
#   1  anything else (no trusted key configured, the copy failed)
set -eu

BUNDLE_TYPE=application/vnd.nix-ci.bundle.v1
BUNDLE_MEDIA_TYPE=application/vnd.nix-ci.bundle.v1.tar
POLICY=/etc/nix-ci/policy.json
nix="nix --extra-experimental-features nix-command"  # `nix copy` and friends are experimental in Nix 2.8

work=$(mktemp -d /tmp/restore-bundle.XXXXXX)
log=$work/log
trap 'rm -rf "$work"' EXIT

say() { echo "restore-bundle: $*" >&2; }
fail() {
  code=$1
  shift
  echo "error: $*" >&2
  exit "$code"
}
# The first line Nix (or tar, or skopeo) gave as its reason. Newer Nix may write
# `error:` alone, then context lines, then the message as an indented `error: …`.
reason() {
  found=$(sed -n 's/^[[:space:]]*error: *\([^[:space:]]\)/\1/p; s/^.*level=fatal msg="\(.*\)".*$/\1/p' "$log" | head -n 1 |
    sed 's/\\"/"/g; s/^Error parsing image name "[^"]*": //' | cut -c 1-300)
  [ -n "$found" ] && echo "$found"
}
last_line() { grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c 1-300; }
first_line() { grep -v '^[[:space:]]*$' "$log" | head -n 1 | cut -c 1-300; }

keys=${TRUSTED_PUBLIC_KEYS:-}
[ -n "$(echo "$keys" | tr -d '[:space:]')" ] || fail 1 "no trusted public key, so no bundle can be checked;" \
  "set TRUSTED_PUBLIC_KEYS to the public key of the bundle's signer (invoke build-runner bakes bundle.public_key in)"
key_names=""
n=0
for key in $keys; do
  n=$((n + 1))
  # The key's text is never shown: a secret key pasted here by mistake must not reach the log.
  echo "$key" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9+/]{43}=$' ||
    fail 1 "word $n of TRUSTED_PUBLIC_KEYS is not a Nix public key; give NAME:BASE64 as nix-store --generate-binary-cache-key writes it"
  key_names="$key_names${key_names:+ }${key%%:*}"
done

# --- the bundle ----------------------------------------------------------------
if [ -n "${BUNDLE_REF:-}" ]; then
  source=$BUNDLE_REF
  host=${BUNDLE_REF%%/*}
  tls=true
  case $host in
    127.* | localhost | localhost:* | "[::1]"*) tls=false ;;
  esac
  [ "${BUNDLE_INSECURE:-}" != 1 ] || tls=false
  authfile=""
  if [ -n "${REGISTRY_HOST:-}" ] && [ "$REGISTRY_HOST" != "$host" ]; then
    say "REGISTRY_HOST is $REGISTRY_HOST, not $host: REGISTRY_USERNAME and REGISTRY_PASSWORD are not sent"
  elif [ -n "${REGISTRY_USERNAME:-}" ] && [ -n "${REGISTRY_PASSWORD:-}" ]; then
    authfile=$work/auth.json
    (umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$host" \
      "$(printf '%s:%s' "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" | base64 | tr -d '\n')" > "$authfile")
  fi
  tls_flag=--tls-verify=$tls
  # The artifact type and bundle layer of the manifest in file $1 ("TYPE DIGEST"), read by Nix, which speaks JSON.
  manifest_facts() {
    found=$(nix-instantiate --eval --strict --argstr manifest "$1" --expr '
      { manifest }:
      let
        m = builtins.fromJSON (builtins.readFile manifest);
        layers = builtins.filter (l: l.mediaType or "" == "'"$BUNDLE_MEDIA_TYPE"'") (m.layers or [ ]);
      in
      "${m.artifactType or m.config.mediaType or "none"} ${if layers == [ ] then "none" else (builtins.head layers).digest}"
    ' 2> "$log") || fail 2 "$BUNDLE_REF has no readable manifest: $(reason || last_line)"
    found=$(echo "$found" | tr -d '"')
    type=${found% *}
    digest=${found#* }
    [ "$type" = "$BUNDLE_TYPE" ] ||
      fail 2 "$BUNDLE_REF is not a bundle (its artifact type is '$type', not $BUNDLE_TYPE); give a reference that \`invoke cache-push\` wrote a bundle to"
    [ "$digest" != none ] || fail 2 "$BUNDLE_REF has no $BUNDLE_MEDIA_TYPE layer; push the bundle again with \`invoke cache-push\`"
  }
  # A refusal is about the credentials, not the reference: say which were given, and how to give them.
  refused() {
    grep -Eqi 'unauthorized|authentication required|denied|invalid username/password' "$log" || return 1
    if [ -n "$authfile" ] || [ -n "${REGISTRY_AUTH_FILE:-}" ]; then
      fail 2 "the registry $host refused the credentials for $BUNDLE_REF; check REGISTRY_USERNAME and REGISTRY_PASSWORD (or REGISTRY_AUTH_FILE)"
    fi
    fail 2 "the registry $host wants credentials for $BUNDLE_REF, and none were given; set REGISTRY_USERNAME and REGISTRY_PASSWORD (or mount an auth file and set REGISTRY_AUTH_FILE)"
  }
  say "pulling $BUNDLE_REF"
  # The manifest first, so that an artifact of another type is refused before its blobs are downloaded.
  skopeo --policy "$POLICY" inspect --raw "$tls_flag" ${authfile:+--authfile "$authfile"} "docker://$BUNDLE_REF" \
    > "$work/manifest.json" 2> "$log" || refused ||
    fail 2 "cannot pull $BUNDLE_REF: $(reason || last_line); check the reference and that the registry answers"
  manifest_facts "$work/manifest.json"
  # skopeo checks every blob against its digest.
  skopeo --policy "$POLICY" copy --quiet --src-tls-verify="$tls" ${authfile:+--src-authfile "$authfile"} \
    "docker://$BUNDLE_REF" "dir:$work/pulled" > "$log" 2>&1 || refused ||
    fail 2 "cannot pull $BUNDLE_REF: $(reason || last_line); check that the registry answers, then try again"
  manifest_facts "$work/pulled/manifest.json"  # what was copied, should the tag have moved meanwhile
  bundle=$work/pulled/${digest#sha256:}
  rm -f "$work/auth.json"
else
  bundle=${BUNDLE:-/closure.tar}
  source=$bundle
fi
# The credentials served the pull; what the runner starts must not inherit them.
unset REGISTRY_USERNAME REGISTRY_PASSWORD REGISTRY_AUTH_FILE REGISTRY_HOST

if [ -d "$bundle" ]; then
  fail 2 "$bundle is a directory, not a bundle: the file given to docker run -v did not exist (docker then mounts an empty directory); give the path of closure.tar"
fi
[ -e "$bundle" ] || fail 2 "no bundle at $bundle; mount one (-v \"\$PWD/closure.tar:/closure.tar:ro\") or set BUNDLE_REF to a registry reference"
mkdir "$work/bundle"
tar -x -f "$bundle" -C "$work/bundle" > "$log" 2>&1 ||
  fail 2 "$source is not a bundle: tar cannot read it ($(first_line)); make it again with \`invoke bundle\`"
cache=$work/bundle/cache
# Only what `invoke bundle` writes: cache/ of plain files and directories, and the result link.
strange=$(find "$work/bundle" -mindepth 1 ! -path "$work/bundle/result" ! -type f ! -type d | head -n 1)
[ -z "$strange" ] ||
  fail 2 "$source is not a bundle: it holds ${strange#"$work/bundle/"}, which is neither a file nor a directory; make it with \`invoke bundle\`"
[ -z "$(find "$work/bundle" -mindepth 1 -maxdepth 1 ! -name cache ! -name result | head -n 1)" ] ||
  fail 2 "$source is not a bundle: it holds files outside cache/; make it with \`invoke bundle\`"
[ -f "$cache/nix-cache-info" ] && [ -L "$work/bundle/result" ] ||
  fail 2 "$source is not a bundle: it lacks cache/nix-cache-info or the result link; make it with \`invoke bundle\`"
path=$(readlink "$work/bundle/result")
echo "$path" | grep -Eq '^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+$' ||
  fail 2 "$source is not a bundle: its result link points to '$path', not a store path"

# --- checks, before anything enters the store -----------------------------------
$nix path-info --store "file://$cache" --recursive "$path" > "$work/closure" 2> "$log" ||
  fail 2 "$source is incomplete: $(reason || last_line); make it again with \`invoke bundle\`"
missing=$(nix-store --check-validity --print-invalid $(cat "$work/closure"))
signers=$(sed -n 's/^Sig: \([^:]*\):.*$/\1/p' "$cache"/*.narinfo | sort -u | tr '\n' ' ' | sed 's/ $//')
if ! $nix store verify --store "file://$cache" --option trusted-public-keys "$keys" --recursive "$path" > "$log" 2>&1; then
  untrusted=$(sed -n "s/^path '\(.*\)' is untrusted\$/\1/p" "$log" | head -n 1)
  if [ -n "$untrusted" ]; then
    [ -n "$signers" ] || fail 3 "$source is not signed, so it cannot be trusted; make it with \`invoke bundle\`, which signs it"
    its=$(sed -n 's/^Sig: \([^:]*\):.*$/\1/p' "$cache/$(basename "$untrusted" | cut -c 1-32).narinfo" | sort -u | tr '\n' ' ' |
      sed 's/ $//')
    [ -n "$its" ] || fail 3 "$source holds $untrusted unsigned, so it cannot be trusted; make it again with \`invoke bundle\`"
    for signer in $its; do
      case " $key_names " in
        *" $signer "*) fail 3 "$source was modified after it was signed: the signature of $untrusted by $signer does not match" ;;
      esac
    done
    fail 3 "$source is signed by $its, not by a trusted key ($key_names); set TRUSTED_PUBLIC_KEYS to the signer's public key, or bundle with a trusted key"
  fi
  grep -q 'was modified' "$log" &&
    fail 3 "$source was modified after it was signed: $(sed -n "s/^path '\([^']*\)' was modified.*$/\1/p" "$log" | head -n 1) does not match its hash"
  fail 3 "$source is damaged: $(reason || last_line); make it again with \`invoke bundle\`"
fi

# --- the copy --------------------------------------------------------------------
if ! $nix copy --from "file://$cache" --option trusted-public-keys "$keys" --option require-sigs true "$path" > "$log" 2>&1; then
  why=$(reason || last_line)
  if [ -n "$missing" ]; then
    # Remove what this copy added; what was valid before stays.
    still=$(nix-store --check-validity --print-invalid $missing)
    added=$(for p in $missing; do echo "$still" | grep -qxF "$p" || echo "$p"; done)
    [ -z "$added" ] || nix-store --delete $added > /dev/null 2>&1 || true
  fi
  fail 1 "restoring $path from $source failed: $why"
fi
ln -sfn "$path" /result
say "restored $path from $source: $(wc -l < "$work/closure") paths ($(echo $missing | wc -w) new), signed by $signers"

rm -rf "$work"
trap - EXIT
[ $# -gt 0 ] || set -- /result/bin/run
exec "$@"

# A reproducible tar writer for the dockerTools stand-in (busybox tar records
# real owners and mtimes, and user names from the building machine).
#
# Input: lines of `stat -c '%f %s %u %g %N'`, in archive order; the paths,
# relative to the current directory, are also the names in the archive.
# Output: a ustar archive on stdout, with pax records for names and link
# targets over 100 bytes. Every mtime is 1, user and group names are empty.
# Variables: uid, gid: the building user, whose files are written as owned
# by 0:0; fixed: space-separated names of directories written as 0755 and
# 0:0 whatever they are on disk (the store directory and its parents);
# fragment=1: a piece of an archive, without the two end blocks;
# headersOnly=1: only the headers, for a piece whose file bytes (and their
# padding) someone else writes; implies fragment=1.

BEGIN {
    for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i
    split("100 8 8 8 12 12 8 1 100 6 2 32 32 8 8 155 12", width, " ")
}

function nuls(n) { while (n-- > 0) printf "%c", 0 }
function padding(size) { return (512 - size % 512) % 512 }
function bytesum(s,   i, sum) {
    for (i = 1; i <= length(s); i++) sum += ord[substr(s, i, 1)]
    return sum
}
function fromhex(s,   i, n) {
    for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return n
}
function fail(message) {
    print "tar.awk: " message | "cat 1>&2"
    failed = 1
    exit 1
}

# header(...): one 512-byte ustar header; fields longer than theirs are cut.
function header(name, mode, uid, gid, size, type, link,   f, i, sum) {
    f[1] = substr(name, 1, 100); f[2] = sprintf("%07o", mode)
    f[3] = sprintf("%07o", uid); f[4] = sprintf("%07o", gid)
    f[5] = sprintf("%011o", size); f[6] = sprintf("%011o", 1)
    f[8] = type; f[9] = substr(link, 1, 100); f[10] = "ustar"; f[11] = "00"
    sum = 8 * 32 # the checksum field counts as eight spaces
    for (i = 1; i <= 17; i++) sum += bytesum(f[i])
    f[7] = sprintf("%06o", sum)
    for (i = 1; i <= 17; i++) {
        printf "%s", f[i]
        if (i == 7) printf "%c ", 0
        else nuls(width[i] - length(f[i]))
    }
}

# record(key, value): a pax record, "<its length> key=value\n".
function record(key, value,   s, digits) {
    s = " " key "=" value "\n"
    digits = length(length(s) "")
    while (length((length(s) + digits) "") != digits) digits++
    return (length(s) + digits) s
}

{
    bits = fromhex($1); size = $2; owner = $3; group = $4
    rest = $0
    sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /, "", rest)
    kind = int(bits / 4096); mode = bits % 4096; link = ""
    if (kind == 10) { # symlink: rest is 'name' -> 'target'
        i = index(rest, "' -> '")
        name = substr(rest, 2, i - 2)
        link = substr(rest, i + 6, length(rest) - i - 6)
        type = "2"; size = 0
    } else if (kind == 4) {
        name = rest "/"; type = "5"; size = 0
    } else if (kind == 8) {
        name = rest; type = "0"
    } else fail(rest ": not a file, directory or symlink")

    if (owner == uid) owner = 0
    if (group == gid) group = 0
    if (index(" " fixed " ", " " rest " ")) { mode = 493; owner = 0; group = 0 } # 0755

    pax = ""
    if (length(name) > 100) pax = pax record("path", name)
    if (length(link) > 100) pax = pax record("linkpath", link)
    if (pax != "") {
        header("././@PaxHeader", 420, 0, 0, length(pax), "x", "")
        printf "%s", pax
        nuls(padding(length(pax)))
    }
    header(name, mode, owner, group, size, type, link)
    if (type == "0" && !headersOnly) {
        fflush()
        quoted = rest
        gsub(/'/, "'\\''", quoted)
        if (system("cat '" quoted "'") != 0) fail(rest ": cannot read")
        nuls(padding(size))
    }
}

# The end of the archive: two zero blocks.
END { if (!failed && !fragment && !headersOnly) nuls(1024) }

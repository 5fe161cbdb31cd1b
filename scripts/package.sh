#!/usr/bin/env bash
# package.sh: build Debian's bento package from this tree with plain
# dpkg-deb (no debhelper): bentod and bentoctl in /usr/sbin, bento in
# /usr/bin, bento-runner in /usr/lib/bento, /etc/bento/bentorc as a
# conffile, the systemd unit, a logrotate file and the man pages (the
# option list of bentorc(5) is what the bentod being packaged prints with
# --list-options, so it cannot drift from it).
#
# Usage: bash scripts/package.sh [-o OUTDIR] [--lintian]
#   -o OUTDIR   where the .deb goes (default: ./bin); its path is printed last
#   --lintian   check the package with lintian as well (installs nothing)
# Environment: GOARCH (default: the machine's), BENTO_VERSION (default:
# internal/server's Version, plus the commit when this is a git tree).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'package: %s\n' "$*" >&2; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }

out=bin
run_lintian=0
while [ $# -gt 0 ]; do
	case "$1" in
	-o) [ $# -ge 2 ] || die "-o needs a directory"; out=$2; shift 2 ;;
	--lintian) run_lintian=1; shift ;;
	*) die "usage: bash scripts/package.sh [-o OUTDIR] [--lintian]" ;;
	esac
done

export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
command -v go >/dev/null || die "Go is missing"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (package dpkg)"

# The version: bentod's own, and the commit it was built from, so that
# every commit makes a newer package than the one before it.
base=$(sed -n 's|^const Version = "bentod/\(.*\)"$|\1|p' internal/server/server.go)
[ -n "$base" ] || die "no Version in internal/server/server.go"
if [ -n "${BENTO_VERSION:-}" ]; then
	version=$BENTO_VERSION
elif git rev-parse --git-dir >/dev/null 2>&1; then
	version="$base+git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S).$(git rev-parse --short=10 HEAD)"
else
	version=$base
fi
# The date in the man pages and the changelog: the commit's, so that a
# rebuild of the same commit makes the same package.
if git rev-parse --git-dir >/dev/null 2>&1; then
	epoch=$(git log -1 --format=%ct)
else
	epoch=$(date +%s)
fi
export SOURCE_DATE_EPOCH=$epoch

goarch=${GOARCH:-$(go env GOARCH)}
case "$goarch" in
amd64 | arm64 | ppc64le | s390x | riscv64 | mips64le) arch=$goarch ;;
386) arch=i386 ;;
arm) arch=armhf ;;
*) die "no Debian architecture known for GOARCH=$goarch" ;;
esac

stage=$(mktemp -d /tmp/bento-package.XXXXXX)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root"

say "building bento $version for $arch"
mkdir -p "$stage/bin" "$stage/host"
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' \
	-o "$stage/bin/" ./cmd/bentod ./cmd/bentoctl ./cmd/bento ./cmd/bento-runner
# The man pages come from what the programs print: built for this
# machine, in case GOARCH is another.
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$stage/host/" ./cmd/bentod ./cmd/bentoctl ./cmd/bento

install -d -m 755 "$root/usr/sbin" "$root/usr/bin" "$root/usr/lib/bento" "$root/etc/bento" \
	"$root/lib/systemd/system" "$root/etc/logrotate.d" "$root/usr/share/doc/bento" \
	"$root/usr/share/man/man1" "$root/usr/share/man/man5" "$root/usr/share/man/man8" "$root/DEBIAN"
install -m 755 "$stage/bin/bentod" "$stage/bin/bentoctl" "$root/usr/sbin/"
install -m 755 "$stage/bin/bento" "$root/usr/bin/"
install -m 755 "$stage/bin/bento-runner" "$root/usr/lib/bento/"
install -m 644 dist/bentorc "$root/etc/bento/bentorc"
install -m 644 dist/systemd/bentod.service "$root/lib/systemd/system/bentod.service"
install -m 644 dist/logrotate/bento "$root/etc/logrotate.d/bento"
years=$(date -u -d "@$epoch" +%Y)
if git rev-parse --git-dir >/dev/null 2>&1; then
	first=$(git log --max-parents=0 --format=%cd --date=format:%Y | sort | sed -n 1p)
	[ "$first" = "$years" ] || years="$first-$years"
fi
sed "s/@YEARS@/$years/" dist/debian/copyright >"$root/usr/share/doc/bento/copyright"
chmod 644 "$root/usr/share/doc/bento/copyright"
install -d -m 755 "$root/usr/share/lintian/overrides"
install -m 644 dist/debian/lintian-overrides "$root/usr/share/lintian/overrides/bento"
install -m 644 docs/operators.md "$root/usr/share/doc/bento/operators.md"
install -m 644 docs/bentorc.sample "$root/usr/share/doc/bento/bentorc.sample"
install -m 644 docs/upgrading.md "$root/usr/share/doc/bento/upgrading.md"

# The packaged bentorc must be one the packaged bentod accepts, with the
# package's places in it.
"$stage/host/bentod" -f dist/bentorc --verify-config >/dev/null || die "dist/bentorc is not valid"
conf=$("$stage/host/bentod" -f dist/bentorc --dump-config full)
for want in 'RunnerPath /usr/lib/bento/bento-runner' 'ControlSocket /run/bento/control' 'DataDirectory /var/lib/bento'; do
	grep -qx "$want" <<<"$conf" || die "dist/bentorc does not set $want"
done

# roff: backslashes escaped, no line starting a request by accident.
roff_text() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
# bentod --list-options: "Name ARGS" then indented help lines.
options_roff() {
	roff_text | awk '
		/^[^ ]/ { n = index($0, " "); if (n) printf ".TP\n\\fB%s\\fR \\fI%s\\fR\n", substr($0, 1, n-1), substr($0, n+1); else printf ".TP\n.B %s\n", $0; next }
		{ sub(/^ +/, ""); print }'
}
# Go's flag usage: "  -name type" then a tab-indented help line.
flags_roff() {
	roff_text | awk '
		/^  -/ { sub(/^  /, ""); n = index($0, " "); if (n) printf ".TP\n.BI \\-%s \" %s\"\n", substr($0, 2, n-2), substr($0, n+1); else printf ".TP\n.B \\-%s\n", substr($0, 2); next }
		/^[ \t]+[^ \t-]/ { sub(/^[ \t]+/, ""); print }'
}
mandate=$(date -u -d "@$epoch" +%Y-%m-%d)
man_page() { # man_page SOURCE.in DEST PLACEHOLDER-TEXT-FILE
	awk -v date="$mandate" -v ver="$version" -v file="$3" '
		{ gsub(/@DATE@/, date); gsub(/@VERSION@/, ver) }
		/^@(OPTIONS|USAGE)@$/ { while ((getline l < file) > 0) print l; next }
		{ print }' "$1" | gzip -9n >"$2"
}
# "Default here:" is the build machine's (its memory, its cores): not the
# relay's, so the page keeps only the rule (the machine's, less a reserve).
"$stage/host/bentod" --list-options | sed 's/ Default here: .*$//' | options_roff >"$stage/bentorc.opts"
grep -q 'Default here' "$stage/bentorc.opts" && die "bentorc(5) would show the build machine's defaults"
[ "$(grep -c '^\.TP' "$stage/bentorc.opts")" -ge 20 ] || die "bentod --list-options printed too few options"
"$stage/host/bentod" -h 2>&1 | flags_roff >"$stage/bentod.opts"
grep -q 'list\\-options\|list-options' "$stage/bentod.opts" || die "bentod -h printed no --list-options"
"$stage/host/bentoctl" --help 2>&1 | roff_text >"$stage/bentoctl.usage"
"$stage/host/bento" --help 2>&1 | roff_text >"$stage/bento.usage"
man_page dist/man/bentod.8.in "$root/usr/share/man/man8/bentod.8.gz" "$stage/bentod.opts"
man_page dist/man/bentorc.5.in "$root/usr/share/man/man5/bentorc.5.gz" "$stage/bentorc.opts"
man_page dist/man/bentoctl.8.in "$root/usr/share/man/man8/bentoctl.8.gz" "$stage/bentoctl.usage"
man_page dist/man/bento.1.in "$root/usr/share/man/man1/bento.1.gz" "$stage/bento.usage"
if command -v man >/dev/null; then
	for m in "$root"/usr/share/man/man*/*.gz; do
		warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null || true)
		[ -z "$warn" ] || die "$(basename "$m"): $warn"
	done
fi

# A native package's changelog: one entry for this build.
{
	printf 'bento (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Built from the Bento source tree by scripts/package.sh.\n\n'
	printf ' -- Bento developers <bento@torbento.invalid>  %s\n' "$(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n >"$root/usr/share/doc/bento/changelog.gz"

install -m 755 dist/debian/postinst dist/debian/prerm dist/debian/postrm "$root/DEBIAN/"
printf '/etc/bento/bentorc\n/etc/logrotate.d/bento\n' >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" dist/debian/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p "$out"
deb="$out/bento_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1))"

if [ "$run_lintian" = 1 ]; then
	command -v lintian >/dev/null || die "lintian is missing (apt-get install lintian)"
	say "lintian"
	lintian --fail-on error,warning "$deb"
fi
echo "$deb"

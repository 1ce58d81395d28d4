#!/bin/sh
# Builds signpost_<version>_amd64.deb in the current directory (the repository's top level), as `make deb` runs it:
# the binary linked statically against the Swift runtime (so the target needs no Swift, only what `ldd` lists), its
# man page generated from its own help, the systemd unit, the configuration and environment files, and the
# maintainer scripts in packaging/. Needs dpkg-dev (dpkg-shlibdeps) and the Swift toolchain.
set -eu

SWIFT=${SWIFT:-swift}
RELEASE=${RELEASE:--c release --static-swift-stdlib}
version=$(sed -n 's/^let signpostVersion = "\(.*\)"/\1/p' Sources/signpost/Version.swift)
arch=$(dpkg --print-architecture)
work=.build-deb
root=$work/root
rm -rf "$work"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$root/usr/share/doc/signpost/examples" \
    "$root/usr/share/signpost" "$root/usr/share/lintian/overrides" "$root/lib/systemd/system" "$root/etc/signpost/catalog" "$root/etc/default" "$root/var/lib/signpost"

# The binary: Swift's runtime and Foundation linked in; libc, libldns and the like stay shared.
$SWIFT build $RELEASE --product signpost
install -m 0755 .build/release/signpost "$root/usr/bin/signpost"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/signpost"

# The man pages, from the command's own help: swift-argument-parser's generate-manual, the tool its
# generate-manual plugin runs, called on the shipped binary (the plugin itself would rebuild the whole package in
# another configuration first).
$SWIFT build --product generate-manual >/dev/null
date=$(git log -1 --format=%cs 2>/dev/null || date +%F)
mkdir -p "$work/man"
.build/debug/generate-manual "$root/usr/bin/signpost" --date "$date" --authors "Signpost authors" \
    --output-directory "$work/man"
for page in "$work"/man/*.1; do
    gzip -9n -c "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done

install -m 0644 packaging/signpost.service "$root/lib/systemd/system/signpost.service"
install -m 0644 packaging/signpost.json "$root/etc/signpost/signpost.json"
install -m 0644 packaging/default "$root/etc/default/signpost"
install -m 0644 packaging/copyright "$root/usr/share/doc/signpost/copyright"
install -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/signpost"
install -m 0644 packaging/resolved-consul.conf "$root/usr/share/doc/signpost/examples/resolved-consul.conf"
cp -r zones/catalog "$root/usr/share/signpost/demo-catalog"
find "$root/usr/share/signpost" -type d -exec chmod 0755 {} + && find "$root/usr/share/signpost" -type f -exec chmod 0644 {} +
stamp=$(git log -1 --format=%aD 2>/dev/null || date -R)
printf 'signpost (%s) unstable; urgency=medium\n\n  * Release %s: see the project history.\n\n -- Signpost authors <signpost@example.org>  %s\n' \
    "$version" "$version" "$stamp" | gzip -9n > "$root/usr/share/doc/signpost/changelog.gz"
for script in postinst prerm postrm; do install -m 0755 "packaging/$script" "$root/DEBIAN/$script"; done
printf '/etc/signpost/signpost.json\n/etc/default/signpost\n' > "$root/DEBIAN/conffiles"

# Depends: what the binary links, as dpkg-shlibdeps reads it.
mkdir -p "$work/debian"
printf 'Source: signpost\n\nPackage: signpost\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O -e root/usr/bin/signpost 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: signpost
Version: $version
Architecture: $arch
Maintainer: Signpost authors <signpost@example.org>
Installed-Size: $size
Depends: $depends, passwd, procps
Section: net
Priority: optional
Homepage: https://signpost.example.org
Description: DNS gateway for service discovery
 Signpost answers A, AAAA and SRV queries for name.service.consul from a
 watched registry (catalog files, etcd or a Consul agent), leaving out
 unhealthy instances and rotating the answers, and forwards every other name
 to upstream resolvers (plain or over TLS, split by zone) with a cache.
CONTROL

dpkg-deb --root-owner-group -Zxz --build "$root" "signpost_${version}_${arch}.deb" >/dev/null
echo "signpost_${version}_${arch}.deb"

#!/usr/bin/env bash
# The main job on the embedded default: a local KEK, no cloud account.
# Generates a KEK, encrypts a sample file, inspects it, decrypts it, compares.
set -euo pipefail
kpcrypt=${KPCRYPT:-bin/kpcrypt}
dir=$(mktemp -d "${TMPDIR:-/tmp}/kpcrypt-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT

step() { printf '\n$ %s\n' "$*"; "$@"; }

head -c $((24 << 20)) /dev/urandom > "$dir/sample.bin"
echo "sample: $dir/sample.bin, $(wc -c < "$dir/sample.bin") bytes"

step "$kpcrypt" keygen -o "$dir/kek.json"
step "$kpcrypt" encrypt --kek "local:$dir/kek.json" --context purpose=demo -o "$dir/sample.kpc" "$dir/sample.bin"
step "$kpcrypt" inspect "$dir/sample.kpc"
step "$kpcrypt" decrypt --kek "local:$dir/kek.json" -o "$dir/sample.out" "$dir/sample.kpc"
step cmp "$dir/sample.bin" "$dir/sample.out"
echo "decrypted file is identical to the original"

echo
echo "# stdin to stdout works too, and a flipped bit is refused:"
printf 'hello, kpcrypt\n' | "$kpcrypt" encrypt --kek "local:$dir/kek.json" > "$dir/hello.kpc"
"$kpcrypt" decrypt < "$dir/hello.kpc"
printf '\x01' | dd of="$dir/sample.kpc" bs=1 seek=100000 conv=notrunc status=none
if "$kpcrypt" decrypt -o "$dir/tampered.out" "$dir/sample.kpc"; then
	echo "tampered file decrypted: this is a bug" >&2
	exit 1
fi
test ! -e "$dir/tampered.out" && echo "nothing was written for the tampered file"
echo
echo "demo OK"

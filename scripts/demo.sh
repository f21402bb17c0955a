#!/usr/bin/env bash
# The main job on the embedded default: a local KEK, no cloud account.
# Generates a KEK, encrypts a sample file, inspects it, decrypts it, compares.
set -euo pipefail
kpcrypt=${KPCRYPT:-bin/kpcrypt}
kplocal=${KPLOCAL:-bin/kplocal}
dir=$(mktemp -d "${TMPDIR:-/tmp}/kpcrypt-demo.XXXXXX")
kplocal_pid=
cleanup() {
	if [ -n "$kplocal_pid" ]; then kill "$kplocal_pid" 2>/dev/null || true; wait "$kplocal_pid" 2>/dev/null || true; fi
	rm -rf "$dir"
}
trap cleanup EXIT

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
"$kpcrypt" decrypt --kek "local:$dir/kek.json" < "$dir/hello.kpc"
printf '\x01' | dd of="$dir/sample.kpc" bs=1 seek=100000 conv=notrunc status=none
if "$kpcrypt" decrypt --kek "local:$dir/kek.json" -o "$dir/tampered.out" "$dir/sample.kpc"; then
	echo "tampered file decrypted: this is a bug" >&2
	exit 1
fi
test ! -e "$dir/tampered.out" && echo "nothing was written for the tampered file"

echo
echo "# The same job under a Key Protect root key, served by the bundled kplocal:"
export IBMCLOUD_API_KEY=demo-api-key-for-kplocal-only
coproc KPLOCAL { KPLOCAL_API_KEY=$IBMCLOUD_API_KEY exec "$kplocal" --listen 127.0.0.1:0 \
	--instance 5c1b7e0a-3f2d-4e6b-9a8c-0d1e2f3a4b5c --root-key demo-root-key 2>/dev/null; }
kplocal_pid=$KPLOCAL_PID
read -r base <&"${KPLOCAL[0]}"
read -r crn <&"${KPLOCAL[0]}"
export IBMCLOUD_KP_ENDPOINT=$base IBMCLOUD_IAM_ENDPOINT=$base
echo "kplocal at $base; root key $crn"
step "$kpcrypt" encrypt --kek "$crn" -o "$dir/kp.kpc" "$dir/sample.bin"
step "$kpcrypt" inspect --json "$dir/kp.kpc"
step "$kpcrypt" decrypt -o "$dir/kp.out" "$dir/kp.kpc"
step cmp "$dir/sample.bin" "$dir/kp.out"
echo "decrypted with no --kek: the slot's CRN and the environment were enough"

echo
echo "demo OK"

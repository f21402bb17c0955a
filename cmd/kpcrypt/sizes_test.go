package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{
		"65536": 65536, "64KiB": 64 << 10, "64k": 64 << 10, "64K": 64 << 10, "1M": 1 << 20, "1m": 1 << 20,
		"1MiB": 1 << 20, "1MB": 1_000_000, "4kB": 4000, "16MiB": 16 << 20, "100B": 100, " 8 KiB ": 8 << 10,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "1.5M", "M", "1T", "1 MiBs", "99999999999999G"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// Out-of-range and malformed sizes are usage errors (exit 2), not internal
// errors.
func TestChunkSizeUsage(t *testing.T) {
	dir, _ := setup(t, 10)
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--chunk-size", "32MiB", "-o", "x", "plain.bin").expect(t, 2, "out of range: give 4KiB to 16MiB")
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--chunk-size", "1k", "-o", "x", "plain.bin").expect(t, 2, "out of range")
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--chunk-size", "lots", "-o", "x", "plain.bin").expect(t, 2, "is not a size")
	kp(t, dir, nil, "encrypt", "--kek", "local:kek.json", "--chunk-size", "1MB", "-o", "x", "plain.bin").expect(t, 0)
}

package main

import (
	"fmt"
	"strconv"
	"strings"
)

// The chunk sizes the format allows.
const (
	minChunk = 4 << 10
	maxChunk = 16 << 20
)

// sizeUnits are the suffixes parseSize reads, longest first. As GNU tools
// read them: KiB, MiB, GiB and the bare letters k, K, m, M, g, G are powers
// of 1024; kB, MB and GB are powers of 1000; B or nothing is bytes.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"kB", 1000}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"k", 1 << 10}, {"K", 1 << 10}, {"m", 1 << 20}, {"M", 1 << 20}, {"g", 1 << 30}, {"G", 1 << 30},
	{"B", 1},
}

// parseSize reads a size such as 64KiB, 1M, 1MB or 65536.
func parseSize(s string) (int, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("%q is not a size: give a number of bytes, or one with KiB, MiB, k or M (powers of 1024) or kB, MB (powers of 1000)", s)
	}
	return int(n * mult), nil
}

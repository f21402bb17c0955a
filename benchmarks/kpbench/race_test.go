//go:build race

package kpbench

// raceEnabled: the test binary runs under the race detector, so the
// packages of cmd/kpcrypt are in the build cache compiled with -race.
const raceEnabled = true

//go:build !race

package kpbench

const raceEnabled = false

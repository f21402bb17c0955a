package kpbench

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStatus returns a "Name:  123 kB" field of /proc/self/status in bytes,
// or -1.
func procStatus(field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return n << 10 // kB
	}
	return -1
}

// peakRSS is the process's peak resident set: VmHWM, or getrusage's maxrss
// where /proc is missing.
func peakRSS() int64 {
	if n := procStatus("VmHWM"); n >= 0 {
		return n
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Maxrss << 10 // KiB on Linux
}

// currentRSS is VmRSS, or -1.
func currentRSS() int64 { return procStatus("VmRSS") }

// resetPeakRSS sets VmHWM back to the current RSS (Linux ≥ 4.0), so that
// the peak measured afterwards is the peak of what follows. It reports
// whether it could.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// settle returns freed memory to the OS, so that RSS reflects live data.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuStat is the machine-wide first line of /proc/stat, in clock ticks.
type cpuStat struct {
	busy, total, steal uint64
	ok                 bool
}

func readCPUStat() cpuStat {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return cpuStat{}
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuStat{}
	}
	var v [10]uint64
	for i := 1; i < len(fields) && i <= 10; i++ {
		v[i-1], _ = strconv.ParseUint(fields[i], 10, 64)
	}
	// user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already counted in user.
	var s cpuStat
	for i := range 8 {
		s.total += v[i]
	}
	s.busy = s.total - v[3] - v[4]
	s.steal = v[7]
	s.ok = true
	return s
}

// coresBusy returns how many cores were busy, on average, between a and b,
// and how many were stolen by the hypervisor.
func coresBusy(a, b cpuStat) (busy, steal float64) {
	if !a.ok || !b.ok || b.total <= a.total {
		return -1, -1
	}
	n := float64(runtime.NumCPU())
	d := float64(b.total - a.total)
	return float64(b.busy-a.busy) / d * n, float64(b.steal-a.steal) / d * n
}

// loadavg returns the 1-minute load average, or -1.
func loadavg() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// cpuModel returns the CPU model name and the flags that matter to AES-GCM.
func cpuModel() (model string, flags []string) {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH, nil
	}
	want := map[string]bool{"aes": true, "pclmulqdq": true, "avx": true, "avx2": true, "vaes": true,
		"vpclmulqdq": true, "avx512f": true, "avx512vl": true, "sha_ni": true, "hypervisor": true}
	for line := range strings.SplitSeq(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		case "flags":
			if flags == nil {
				for f := range strings.FieldsSeq(v) {
					if want[f] {
						flags = append(flags, f)
					}
				}
			}
		}
	}
	return model, flags
}

// memTotal returns MemTotal from /proc/meminfo in bytes, or -1.
func memTotal() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return -1
}

// kernel returns `uname -sr`, or "".
func kernel() string {
	out, err := exec.Command("uname", "-sr").Output()
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(out))
}

// nproc returns the output of `nproc`, falling back on runtime.NumCPU.
func nproc() int {
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(string(bytes.TrimSpace(out))); err == nil {
			return n
		}
	}
	return runtime.NumCPU()
}

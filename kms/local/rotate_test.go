package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// envRotate makes the test binary a rotating child: "PATH N" rotates the
// key file at PATH N times and exits.
const envRotate = "KPCRYPT_TEST_ROTATE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(envRotate); spec != "" {
		var path string
		var n int
		if _, err := fmt.Sscan(spec, &path, &n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for range n {
			k, err := OpenFile(path)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			v, err := k.Rotate(context.Background())
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println(v) // acknowledged
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Two processes rotating one key file at once: every version either
// acknowledged is still in the file afterwards.
func TestConcurrentRotationsAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := Generate(path); err != nil {
		t.Fatal(err)
	}
	const procs, each = 3, 8
	outs := make([][]byte, procs)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), envRotate+"="+path+" "+strconv.Itoa(each))
			out, err := cmd.Output()
			if err != nil {
				t.Errorf("child %d: %v", i, err)
			}
			outs[i] = out
		})
	}
	wg.Wait()
	k, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := k.Versions(t.Context())
	have := map[string]bool{}
	for _, v := range vs {
		have[v] = true
	}
	acked := 0
	for _, out := range outs {
		var v string
		for s := string(out); len(s) > 0; {
			n, _ := fmt.Sscanln(s, &v)
			if n == 0 {
				break
			}
			acked++
			if !have[v] {
				t.Errorf("acknowledged version %s was lost", v)
			}
			_, s, _ = cut(s)
		}
	}
	if acked != procs*each || len(vs) != 1+procs*each {
		t.Fatalf("%d acknowledged, %d versions in the file, want %d and %d", acked, len(vs), procs*each, 1+procs*each)
	}
}

func cut(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == '\n' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Two KEK values for one file, rotating from many goroutines: nothing is
// lost either, and each value sees every version after its own rotation.
func TestConcurrentRotationsInOneProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := Generate(path); err != nil {
		t.Fatal(err)
	}
	a, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []string
	for i := range 16 {
		k := a
		if i%2 == 1 {
			k = b
		}
		wg.Go(func() {
			v, err := k.Rotate(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			acked = append(acked, v)
			mu.Unlock()
		})
	}
	wg.Wait()
	k, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := k.Versions(t.Context())
	if len(vs) != 17 {
		t.Fatalf("%d versions after 16 acknowledged rotations, want 17", len(vs))
	}
	have := map[string]bool{}
	for _, v := range vs {
		have[v] = true
	}
	for _, v := range acked {
		if !have[v] {
			t.Errorf("acknowledged version %s was lost", v)
		}
	}
}

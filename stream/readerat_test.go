package stream

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
)

// TestReaderAtBoundaries reads at every offset and length near the chunk
// boundaries of a stream of several chunks, with one and several workers,
// and compares with the plaintext.
func TestReaderAtBoundaries(t *testing.T) {
	dek := testKey("ra-bounds")
	const cs = MinChunkSize
	c := testCipher(t, dek, cs, "ra-bounds")
	pt := testPlaintext(5*cs+123, 4)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	var points []int64
	for k := int64(0); k <= 6; k++ {
		for _, d := range []int64{-2, -1, 0, 1, 2} {
			if o := k*cs + d; o >= 0 && o <= int64(len(pt))+1 {
				points = append(points, o)
			}
		}
	}
	points = append(points, int64(len(pt))-1, int64(len(pt)))
	for _, workers := range []int{1, 2, 4} {
		r, err := c.NewReaderAtOptions(bytes.NewReader(body), int64(len(body)), &Options{Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		for _, from := range points {
			for _, to := range points {
				if to < from {
					continue
				}
				p := make([]byte, to-from)
				n, err := r.ReadAt(p, from)
				want := pt[min(from, int64(len(pt))):min(to, int64(len(pt)))]
				wantErr := error(nil)
				if to > int64(len(pt)) {
					wantErr = io.EOF
				}
				if n != len(want) || err != wantErr || !bytes.Equal(p[:n], want) {
					t.Fatalf("%d workers, ReadAt [%d, %d): %d bytes, %v; want %d, %v", workers, from, to, n, err, len(want), wantErr)
				}
			}
		}
	}
}

// TestReaderAtTamperedSpan: a read spanning several chunks, one of which
// was modified, returns the plaintext before that chunk only, and p holds
// nothing after it; concurrent reads meanwhile stay correct.
func TestReaderAtTamperedSpan(t *testing.T) {
	dek := testKey("ra-tamper")
	const cs = MinChunkSize
	full := cs + TagSize
	c := testCipher(t, dek, cs, "ra-tamper")
	pt := testPlaintext(12*cs+5, 5)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{0, 3, 7} {
		b := bytes.Clone(body)
		b[bad*full+9] ^= 1
		r, err := c.NewReaderAtOptions(bytes.NewReader(b), int64(len(b)), &Options{Workers: 4})
		if err != nil {
			t.Fatal(err)
		}
		for _, from := range []int64{0, 1, cs + 7, int64(bad) * cs} {
			p := bytes.Repeat([]byte{0xAA}, 10*cs)
			n, err := r.ReadAt(p, from)
			var ce *ChunkError
			wantN := max(int64(bad)*cs-from, 0)
			if int64(bad)*cs+cs <= from || from+int64(len(p)) <= int64(bad)*cs {
				continue // the read does not touch the bad chunk
			}
			if !errors.As(err, &ce) || ce.Index != uint64(bad) || !errors.Is(err, ErrAuthentication) || int64(n) != wantN {
				t.Fatalf("bad chunk %d, read from %d: %d bytes, %v; want %d bytes and chunk %d failing", bad, from, n, err, wantN, bad)
			}
			if !bytes.Equal(p[:n], pt[from:from+int64(n)]) || !bytes.Equal(p[n:min(int64(len(p)), int64(len(pt))-from)], make([]byte, min(int64(len(p)), int64(len(pt))-from)-int64(n))) {
				t.Fatalf("bad chunk %d, read from %d: p holds something after the failure", bad, from)
			}
		}
	}
	r, err := c.NewReaderAtOptions(bytes.NewReader(body), int64(len(body)), &Options{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for k := range 200 {
				off := int64((g*7919 + k*4099) % len(pt))
				p := make([]byte, (k*997)%(3*cs)+1)
				n, err := r.ReadAt(p, off)
				if err != nil && err != io.EOF || !bytes.Equal(p[:n], pt[off:off+int64(n)]) {
					t.Errorf("concurrent ReadAt at %d: %d bytes, %v", off, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestReaderAtAllocations: in steady state a 4 KiB ReadAt allocates
// nothing when it falls in one chunk, cached or not, and a small constant
// (the goroutines of a parallel read) when it spans two.
func TestReaderAtAllocations(t *testing.T) {
	dek := testKey("ra-allocs")
	const cs = DefaultChunkSize
	c := testCipher(t, dek, cs, "ra-allocs")
	pt := testPlaintext(40*cs, 6)
	body, err := c.SealBody(nil, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, workers := range []int{1, 2, 4} {
		r, err := c.NewReaderAtOptions(bytes.NewReader(body), int64(len(body)), &Options{Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 4096)
		k := 0
		// Alternate between chunks, so that every read opens one.
		inside := testing.AllocsPerRun(200, func() {
			k++
			off := int64(k%37)*cs + int64(k%13)*1000
			if _, err := r.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
		})
		across := testing.AllocsPerRun(200, func() {
			k++
			off := int64(k%37+1)*cs - 2048
			if _, err := r.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
		})
		big := make([]byte, 8*cs)
		spanning := testing.AllocsPerRun(50, func() {
			k++
			if _, err := r.ReadAt(big, int64(k%20)*cs+100); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("%d workers: allocations per 4 KiB ReadAt in a chunk %.1f, across two %.1f; per 512 KiB ReadAt %.1f", workers, inside, across, spanning)
		if inside != 0 {
			t.Errorf("%d workers: a 4 KiB ReadAt in one chunk allocates %.1f times, want 0", workers, inside)
		}
		if across != 0 || spanning != 0 {
			t.Errorf("%d workers: %.1f allocations across two chunks, %.1f across nine; want 0", workers, across, spanning)
		}
	}
}

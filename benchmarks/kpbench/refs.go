package kpbench

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// The references of issue 16: raw AES-GCM doing the same work as a kpcrypt
// entry point, so that the entry point's target is a ratio measured in the
// same run.
//
//   - raw-alloc: seal or open a whole in-memory message in 64 KiB chunks on
//     all cores into a freshly allocated output, as envelope.Seal and
//     envelope.Open must (cases seal, seal-16m).
//   - raw-pread: GOMAXPROCS workers each pread their own 64 KiB chunks of the
//     page-cached input file and seal or open them into a buffer of their
//     own (cases kpcrypt-file, cli-stdout).
//   - raw-pwrite: the same, each sealed or opened chunk then pwritten at its
//     place in an output file on tmpfs, which is created before and synced
//     and closed after, inside the timed section (case cli-tmpfs).

// rawFileKey is the key of rawFile: raw AES-GCM chunks of the plaintext,
// chunk i under the nonce i, the input of the raw references' decryption.
var rawFileKey = []byte("kpbench raw AES-GCM file key 32B")

func rawFileGCM() (cipher.AEAD, error) {
	b, err := aes.NewCipher(rawFileKey)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func chunkNonce(nonce *[12]byte, i uint64) []byte {
	binary.BigEndian.PutUint64(nonce[4:], i)
	return nonce[:]
}

// writeRawFile writes size bytes of plaintext, sealed as raw AES-GCM chunks,
// to w.
func writeRawFile(w io.Writer, size int64) error {
	a, err := rawFileGCM()
	if err != nil {
		return err
	}
	var nonce [12]byte
	buf := make([]byte, rawChunk)
	out := make([]byte, 0, rawChunk+16)
	for i, off := uint64(0), int64(0); off < size; i, off = i+1, off+rawChunk {
		p := buf[:min(int64(rawChunk), size-off)]
		fillAt(p, off)
		if _, err := w.Write(a.Seal(out[:0], chunkNonce(&nonce, i), p, nil)); err != nil {
			return err
		}
	}
	return nil
}

// measureRawAlloc is the raw-alloc reference: seal (or open) s.Size bytes
// held in memory, in 64 KiB chunks on GOMAXPROCS goroutines, into an output
// allocated inside the timed section.
func measureRawAlloc(s *Spec) (*Result, error) {
	g, err := newRawGCM()
	if err != nil {
		return nil, err
	}
	goroutines := runtime.GOMAXPROCS(0)
	n := int(s.Size)
	chunks := rawChunks(n)
	pt := plaintext(s.Size)
	switch s.Op {
	case "encrypt":
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		ct := make([]byte, rawSealedSize(n))
		parallel(goroutines, chunks, func(from, to int) error { g.seal(ct, pt, from, to); return nil })
		res := t.stop(s.Size)
		res.OutBytes = int64(len(ct))
		runtime.KeepAlive(pt)
		runtime.KeepAlive(ct)
		return res, nil
	case "decrypt":
		ct := make([]byte, rawSealedSize(n))
		g.seal(ct, pt, 0, chunks)
		pt = nil
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		out := make([]byte, n)
		err = parallel(goroutines, chunks, func(from, to int) error { return g.open(out, ct, from, to) })
		res := t.stop(s.Size)
		res.OutBytes = int64(len(out))
		runtime.KeepAlive(ct)
		if err == nil {
			err = checkPlaintext(out, 0)
		}
		return res, err
	}
	return nil, fmt.Errorf("unknown op %q", s.Op)
}

// checkPlaintext checks p against the plaintext at off, 4 MiB at a time.
func checkPlaintext(p []byte, off int64) error {
	want := make([]byte, 4<<20)
	for i := 0; i < len(p); i += len(want) {
		w := want[:min(len(want), len(p)-i)]
		fillAt(w, off+int64(i))
		if !bytes.Equal(p[i:i+len(w)], w) {
			return fmt.Errorf("the plaintext differs near offset %d", off+int64(i))
		}
	}
	return nil
}

// measureSeal is envelope.Seal (encrypt) or envelope.Open (decrypt) of a
// whole in-memory object with a local KEK. The output is the caller's:
// Result.OutBytes lets the report subtract it from the peak.
func measureSeal(ctx context.Context, s *Spec) (*Result, error) {
	kek, err := local.OpenFile(filepath.Join(s.Dir, kekMemFile))
	if err != nil {
		return nil, err
	}
	pt := plaintext(s.Size)
	switch s.Op {
	case "encrypt":
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		ct, err := envelope.Seal(ctx, pt, kek)
		res := t.stop(s.Size)
		res.OutBytes = int64(len(ct))
		runtime.KeepAlive(pt)
		return res, err
	case "decrypt":
		ct, err := envelope.Seal(ctx, pt, kek)
		if err != nil {
			return nil, err
		}
		pt = nil
		t, err := startTimer(s)
		if err != nil {
			return nil, err
		}
		out, err := envelope.Open(ctx, ct, envelope.KEKs{kek})
		res := t.stop(s.Size)
		res.OutBytes = int64(len(out))
		runtime.KeepAlive(ct)
		if err == nil && int64(len(out)) != s.Size {
			err = checkCount(int64(len(out)), s.Size)
		}
		if err == nil {
			err = checkPlaintext(out, 0)
		}
		return res, err
	}
	return nil, fmt.Errorf("unknown op %q", s.Op)
}

// measureRawFile is the raw-pread reference (s.Out == "") or the
// raw-pwrite one (s.Out the output path, on tmpfs): GOMAXPROCS workers take
// chunk indexes from a shared counter, pread that chunk of the page-cached
// input (the plaintext file to encrypt, rawFile to decrypt), seal or open
// it, and, for raw-pwrite, pwrite it at its place in the output.
func measureRawFile(s *Spec) (*Result, error) {
	a, err := rawFileGCM()
	if err != nil {
		return nil, err
	}
	var in string
	inChunk, outChunk := int64(rawChunk), int64(rawChunk+16)
	switch s.Op {
	case "encrypt":
		in = filepath.Join(s.Dir, plainFile)
	case "decrypt":
		in = filepath.Join(s.Dir, rawFile)
		inChunk, outChunk = outChunk, inChunk
	default:
		return nil, fmt.Errorf("unknown op %q", s.Op)
	}
	f, err := os.Open(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	chunks := (fi.Size() + inChunk - 1) / inChunk
	workers := runtime.GOMAXPROCS(0)
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	var out *os.File
	if s.Out != "" {
		if out, err = os.OpenFile(s.Out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
			return nil, err
		}
		defer os.Remove(s.Out)
		defer out.Close()
	}
	var next atomic.Int64
	var total atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			buf := make([]byte, inChunk)
			dst := make([]byte, 0, max(inChunk, outChunk))
			var nonce [12]byte
			for {
				i := next.Add(1) - 1
				if i >= chunks {
					return
				}
				n, err := f.ReadAt(buf, i*inChunk)
				if err != nil && !(err == io.EOF && n > 0) {
					errs[w] = err
					return
				}
				var res []byte
				if s.Op == "encrypt" {
					res = a.Seal(dst[:0], chunkNonce(&nonce, uint64(i)), buf[:n], nil)
					total.Add(int64(n))
				} else {
					if res, err = a.Open(dst[:0], chunkNonce(&nonce, uint64(i)), buf[:n], nil); err != nil {
						errs[w] = fmt.Errorf("raw chunk %d: %w", i, err)
						return
					}
					total.Add(int64(len(res)))
				}
				if out != nil {
					if _, err := out.WriteAt(res, i*outChunk); err != nil {
						errs[w] = err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if out != nil && errs[0] == nil {
		if err := out.Sync(); err != nil {
			errs[0] = err
		} else {
			errs[0] = out.Close()
		}
	}
	res := t.stop(s.Size)
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	return res, checkCount(total.Load(), s.Size)
}

// tmpfsMagic is TMPFS_MAGIC of statfs(2).
const tmpfsMagic = 0x01021994

// isTmpfs reports whether dir is on a tmpfs.
func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false
	}
	return uint64(st.Type) == tmpfsMagic
}

// findTmpfs picks the directory of the tmpfs cases: want if given (it must
// be a tmpfs), else /dev/shm if it is a tmpfs, else the first tmpfs among
// /run/shm, /tmp and os.TempDir(). note says what was found, for the report.
func findTmpfs(want string) (dir, note string) {
	if want != "" {
		if isTmpfs(want) {
			return want, fmt.Sprintf("`%s` (asked for with -tmpfs; statfs: TMPFS_MAGIC)", want)
		}
		return "", fmt.Sprintf("`%s` (asked for with -tmpfs) is not a tmpfs: the tmpfs cases were not run", want)
	}
	if isTmpfs("/dev/shm") {
		return "/dev/shm", "`/dev/shm` (statfs: TMPFS_MAGIC)"
	}
	for _, d := range []string{"/run/shm", "/tmp", os.TempDir()} {
		if isTmpfs(d) {
			return d, fmt.Sprintf("`%s` (statfs: TMPFS_MAGIC; `/dev/shm` is not a tmpfs here)", d)
		}
	}
	return "", "none found: `/dev/shm` is not a tmpfs, nor are `/run/shm`, `/tmp` and `$TMPDIR`; the tmpfs cases were not run"
}

package kpbench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"gocloud.dev/blob/s3blob"

	"github.com/kpcrypt/kpcrypt/blob"
	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/envelope/batch"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
	"github.com/kpcrypt/kpcrypt/stream"
)

// Issue 15's pipelines at scale.

// startKplocal starts an in-process kplocal with latency and opens a root
// key of it through the Key Protect client.
func startKplocal(ctx context.Context, latency time.Duration, inFlight int) (*kplocal.Running, kms.KEK, error) {
	srv, err := kplocal.Start(kplocal.Config{APIKey: "kpbench-api-key", Latency: latency})
	if err != nil {
		return nil, nil, err
	}
	id, err := srv.CreateKey("kpbench-root", true)
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	opener := &keyprotect.Opener{Config: keyprotect.Config{
		BaseURL: srv.BaseURL(), IAMURL: srv.BaseURL(), APIKey: "kpbench-api-key",
		MaxInFlight: max(64, inFlight),
	}}
	kek, err := opener.Open(ctx, srv.KeyCRN(id))
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	return srv, kek, nil
}

// distinctDEKs inspects every file in paths and counts the distinct wrapped
// DEKs (KEK URI and fingerprint) and KEKs of their slots, and the slots not
// under version.
func distinctDEKs(paths []string, version string) (deks, keks, other int, err error) {
	dk, kk := map[string]bool{}, map[string]bool{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return 0, 0, 0, err
		}
		h, err := envelope.Inspect(f)
		f.Close()
		if err != nil {
			return 0, 0, 0, fmt.Errorf("%s: %w", p, err)
		}
		for _, sl := range h.Slots {
			dk[sl.KEK+" "+sl.Fingerprint] = true
			kk[sl.KEK] = true
			if version != "" && sl.KeyVersion != version {
				other++
			}
		}
	}
	return len(dk), len(kk), other, nil
}

// measurePipeline is issue 15's batch rewrap: s.Objects files of 4 KiB
// written with DataKeyReuse (s.PerDEK files per DEK) under a kplocal Key
// Protect key with s.Latency, the key rotated, the files rewrapped by
// batch.Rewrap with one envelope.RewrapCache, and then all read by a
// Decrypter with a DataKeyCache; kplocal counts the KMS calls of each phase.
// The files are written to s.Tmpfs when there is one (the rewrap's fsyncs
// are then cheap), else to s.Dir. It also measures the overhead of one Key
// Protect slot on a 4 KiB object.
func measurePipeline(ctx context.Context, s *Spec) (*Result, error) {
	srv, kek, err := startKplocal(ctx, s.Latency, s.Workers)
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	rot, ok := kek.(kms.Rotator)
	if !ok {
		return nil, fmt.Errorf("the Key Protect KEK %T cannot rotate", kek)
	}
	base := s.Tmpfs
	if base == "" {
		base = s.Dir
	}
	dir, err := os.MkdirTemp(base, "kpbench-pipeline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pts := objects(s.Objects)
	keyring := envelope.KEKs{kek}
	m := map[string]float64{}

	// Warm up (the IAM token, a connection); the overhead of one slot.
	one, err := envelope.Seal(ctx, pts[0], kek)
	if err != nil {
		return nil, err
	}
	if _, err := envelope.Open(ctx, one, keyring); err != nil {
		return nil, err
	}
	m["overhead_kp_bytes"] = float64(len(one) - len(pts[0]))

	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	srv.ResetStats()
	enc := &envelope.Encrypter{KEKs: []kms.KEK{kek}, Reuse: &envelope.DataKeyReuse{MaxStreams: s.PerDEK, MaxAge: time.Hour}}
	paths := make([]string, len(pts))
	d, err := pool(s.Workers, len(pts), func(i int) error {
		ct, err := enc.Seal(ctx, pts[i])
		if err != nil {
			return err
		}
		paths[i] = filepath.Join(dir, fmt.Sprintf("obj-%06d.kpc", i))
		return os.WriteFile(paths[i], ct, 0o600)
	})
	if err != nil {
		return nil, fmt.Errorf("writing the files: %w", err)
	}
	st := srv.Stats()
	m["files"] = float64(len(pts))
	m["write_s"] = d.Seconds()
	m["write_wraps"] = float64(st.Wrap)
	if one, err := os.ReadFile(paths[0]); err == nil {
		m["overhead_kp_reuse_bytes"] = float64(len(one) - len(pts[0]))
	}
	deks, keks, _, err := distinctDEKs(paths, "")
	if err != nil {
		return nil, err
	}
	m["deks"], m["keks"] = float64(deks), float64(keks)

	version, err := rot.Rotate(ctx)
	if err != nil {
		return nil, fmt.Errorf("rotating the key: %w", err)
	}
	files, err := batch.Walk([]string{dir})
	if err != nil {
		return nil, err
	}
	srv.ResetStats()
	st0 := time.Now()
	results := batch.Rewrap(ctx, files, &batch.RewrapOptions{
		Options: envelope.RewrapOptions{Keyring: keyring, Cache: envelope.NewRewrapCache()},
		Jobs:    s.Workers,
	})
	m["rewrap_s"] = time.Since(st0).Seconds()
	files.Close()
	st = srv.Stats()
	rewrapped := 0
	for _, r := range results {
		if r.Status == batch.Rewrapped {
			rewrapped++
		} else if r.Err != nil {
			return nil, fmt.Errorf("rewrap of %s: %w", r.Path, r.Err)
		}
	}
	m["rewrapped"] = float64(rewrapped)
	m["rewrap_kms_calls"] = float64(st.Requests)
	m["rewrap_rewraps"] = float64(st.Rewrap)
	m["rewrap_unwraps"] = float64(st.Unwrap)
	m["rewrap_wraps"] = float64(st.Wrap)
	m["rewrap_versions"] = float64(st.Versions)
	m["rewrap_gets"] = float64(st.Get + st.Metadata)
	dAfter, _, stale, err := distinctDEKs(paths, version)
	if err != nil {
		return nil, err
	}
	m["deks_after"], m["slots_not_rotated"] = float64(dAfter), float64(stale)

	// A reader with a DataKeyCache reads every file.
	srv.ResetStats()
	cts := make([][]byte, len(paths))
	for i, p := range paths {
		if cts[i], err = os.ReadFile(p); err != nil {
			return nil, err
		}
	}
	dec := &envelope.Decrypter{Keyring: keyring, Cache: envelope.NewDataKeyCache(0, 0)}
	d, err = openAll(ctx, dec, cts, pts, s.Workers)
	if err != nil {
		return nil, fmt.Errorf("reading the rewrapped files: %w", err)
	}
	st = srv.Stats()
	m["read_s"] = d.Seconds()
	m["read_unwraps"] = float64(st.Unwrap)
	m["read_kms_calls"] = float64(st.Requests)
	res := t.stop(0)
	res.Metrics = m
	return res, nil
}

// s3Counts counts the requests an s3blob bucket makes of its server.
type s3Counts struct {
	gets, other, bytes atomic.Int64
}

type countingTransport struct {
	c    *s3Counts
	next http.RoundTripper
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if r.Method == http.MethodGet && !r.URL.Query().Has("list-type") {
		t.c.gets.Add(1)
		if err == nil && resp.ContentLength > 0 {
			t.c.bytes.Add(resp.ContentLength)
		}
	} else {
		t.c.other.Add(1)
	}
	return resp, err
}

// measureBlobRanged uploads an s.Size-byte object through package blob to
// an in-process S3 (gofakes3, in memory, over loopback HTTP, opened with
// s3blob), then makes s.Reads reads of 4 KiB at random offsets through
// blob.NewReaderAt with its default chunk cache, counting the GETs and the
// bytes the bucket fetched. The cache's hits are not exported by package
// blob: they are derived as 1 − chunks fetched ÷ chunks the reads touched,
// the chunks fetched being the bytes fetched ÷ (chunk size + 16).
func measureBlobRanged(ctx context.Context, s *Spec) (*Result, error) {
	backend := s3mem.New()
	ts := httptest.NewServer(gofakes3.New(backend).Server())
	defer ts.Close()
	if err := backend.CreateBucket("kpbench"); err != nil {
		return nil, err
	}
	c := &s3Counts{}
	cfg := aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("kpbench", "kpbench", ""),
		HTTPClient:   &http.Client{Transport: countingTransport{c, http.DefaultTransport}},
		BaseEndpoint: aws.String(ts.URL),
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	b, err := s3blob.OpenBucket(ctx, client, "kpbench", nil)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	kek, err := openOrGenerateKEK(filepath.Join(s.Dir, kekMemFile))
	if err != nil {
		return nil, err
	}
	w, err := blob.NewWriter(ctx, b, "object", &envelope.Encrypter{KEKs: []kms.KEK{kek}}, s.Size, nil)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(w, &patternReader{n: s.Size}); err != nil {
		w.Abort(err)
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	c.gets.Store(0)
	c.bytes.Store(0)
	ra, err := blob.NewReaderAt(ctx, b, "object", &envelope.Decrypter{Keyring: envelope.KEKs{kek}}, nil)
	if err != nil {
		return nil, err
	}
	openGets, openBytes := c.gets.Load(), c.bytes.Load()
	c.gets.Store(0)
	c.bytes.Store(0)

	const readSize, chunk = 4 << 10, stream.DefaultChunkSize
	rng := rand.New(rand.NewPCG(uint64(s.Round), 15))
	buf, want := make([]byte, readSize), make([]byte, readSize)
	lat := make([]float64, 0, s.Reads)
	touched := 0
	t, err := startTimer(s)
	if err != nil {
		return nil, err
	}
	for range s.Reads {
		off := rng.Int64N(s.Size - readSize + 1)
		st := time.Now()
		if _, err := ra.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("ranged read at %d: %w", off, err)
		}
		lat = append(lat, float64(time.Since(st).Nanoseconds())/1000)
		touched += int((off+readSize-1)/chunk - off/chunk + 1)
		fillAt(want, off)
		if string(buf) != string(want) {
			return nil, fmt.Errorf("ranged read at %d: wrong plaintext", off)
		}
	}
	res := t.stop(0)
	gets, fetched := c.gets.Load(), c.bytes.Load()
	chunksFetched := float64(fetched) / float64(chunk+16)
	res.Metrics = map[string]float64{
		"reads":             float64(s.Reads),
		"open_gets":         float64(openGets),
		"open_bytes":        float64(openBytes),
		"gets_per_read":     float64(gets) / float64(s.Reads),
		"bytes_per_read":    float64(fetched) / float64(s.Reads),
		"chunks_touched":    float64(touched),
		"chunks_fetched":    chunksFetched,
		"cache_hit_rate":    1 - chunksFetched/float64(touched),
		"median_us":         median(lat),
		"p99_us":            percentile(lat, 0.99),
		"object_chunks":     float64((s.Size + chunk - 1) / chunk),
		"cache_chunks":      blob.DefaultCacheChunks,
		"object_bytes_size": float64(s.Size),
	}
	return res, nil
}

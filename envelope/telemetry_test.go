package envelope

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/kpcrypt/kpcrypt/kms"
)

// recorder is a hand-written OpenTelemetry tracer and meter provider that
// records what it is given, built on the API's no-op types (the SDK stays
// out of the module's dependencies).
type recorder struct {
	mu    sync.Mutex
	spans []recordedSpan
	sums  map[string]int64 // counter name and sorted attributes → sum
	hists map[string]int   // histogram name and attributes → records
}

type recordedSpan struct {
	name  string
	attrs []attribute.KeyValue
	err   bool
	ended bool
}

func newRecorder() *recorder {
	return &recorder{sums: map[string]int64{}, hists: map[string]int{}}
}

func (r *recorder) telemetry() *Telemetry {
	return &Telemetry{TracerProvider: recTracerProvider{TracerProvider: tracenoop.TracerProvider{}, r: r},
		MeterProvider: recMeterProvider{MeterProvider: metricnoop.MeterProvider{}, r: r}}
}

func key(name string, attrs attribute.Set) string {
	var parts []string
	for _, kv := range attrs.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	slices.Sort(parts)
	return strings.Join(append([]string{name}, parts...), " ")
}

func (r *recorder) sum(k string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sums[k]
}

type recTracerProvider struct {
	tracenoop.TracerProvider
	r *recorder
}

func (p recTracerProvider) Tracer(string, ...trace.TracerOption) trace.Tracer {
	return recTracer{Tracer: tracenoop.Tracer{}, r: p.r}
}

// The provider types embed the no-op ones, which satisfy the API's
// embedded interfaces.
type recTracer struct {
	trace.Tracer
	r *recorder
}

func (t recTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	cfg := trace.NewSpanStartConfig(opts...)
	t.r.mu.Lock()
	t.r.spans = append(t.r.spans, recordedSpan{name: name, attrs: cfg.Attributes()})
	i := len(t.r.spans) - 1
	t.r.mu.Unlock()
	return ctx, &recSpan{Span: tracenoop.Span{}, r: t.r, i: i}
}

type recSpan struct {
	trace.Span
	r *recorder
	i int
}

func (s *recSpan) SetStatus(c codes.Code, _ string) {
	s.r.mu.Lock()
	s.r.spans[s.i].err = c == codes.Error
	s.r.mu.Unlock()
}

func (s *recSpan) End(...trace.SpanEndOption) {
	s.r.mu.Lock()
	s.r.spans[s.i].ended = true
	s.r.mu.Unlock()
}

type recMeterProvider struct {
	metricnoop.MeterProvider
	r *recorder
}

func (p recMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter {
	return recMeter{Meter: metricnoop.Meter{}, r: p.r}
}

type recMeter struct {
	metric.Meter
	r *recorder
}

func (m recMeter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return recCounter{Int64Counter: metricnoop.Int64Counter{}, r: m.r, name: name}, nil
}

func (m recMeter) Float64Histogram(name string, _ ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	return recHist{Float64Histogram: metricnoop.Float64Histogram{}, r: m.r, name: name}, nil
}

type recCounter struct {
	metric.Int64Counter
	r    *recorder
	name string
}

func (c recCounter) Add(_ context.Context, n int64, opts ...metric.AddOption) {
	k := key(c.name, metric.NewAddConfig(opts).Attributes())
	c.r.mu.Lock()
	c.r.sums[k] += n
	c.r.mu.Unlock()
}

type recHist struct {
	metric.Float64Histogram
	r    *recorder
	name string
}

func (h recHist) Record(_ context.Context, v float64, opts ...metric.RecordOption) {
	k := key(h.name, metric.NewRecordConfig(opts).Attributes())
	h.r.mu.Lock()
	if v >= 0 {
		h.r.hists[k]++
	}
	h.r.mu.Unlock()
}

// TestTelemetry: KMS calls, cache hits, misses and evictions, and bytes
// sealed and opened reach the providers given.
func TestTelemetry(t *testing.T) {
	ctx := context.Background()
	rec := newRecorder()
	k := newLocalKEK(t, "kek")
	v1, _ := k.CurrentVersion(ctx)
	tel := rec.telemetry()
	e := &Encrypter{KEKs: []kms.KEK{k}, Telemetry: tel}
	var files [][]byte
	for _, n := range []int{100, 5000, 3} {
		f, err := e.Seal(ctx, testPlaintext(n))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	cache := NewDataKeyCache(2, time.Hour)
	cache.Telemetry = tel
	d := &Decrypter{Keyring: KEKs{k}, Cache: cache, Telemetry: tel, MinKeyVersions: map[string]string{k.URI(): v1}}
	for _, f := range append(files, files[2]) {
		if _, err := d.Open(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	ra, err := d.NewReaderAt(ctx, strings.NewReader(string(files[1])), int64(len(files[1])))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.ReadAt(make([]byte, 1000), 10); err != nil {
		t.Fatal(err)
	}
	// A failing unwrap: another KEK's file.
	other := newLocalKEK(t, "other")
	foreign, err := Seal(ctx, []byte("x"), other)
	if err != nil {
		t.Fatal(err)
	}
	bad := &Decrypter{Keyring: badKeyring{uri: other.URI(), kek: k}, Telemetry: tel}
	if _, err := bad.Open(ctx, foreign); !errors.Is(err, ErrNoKEK) {
		t.Fatal(err)
	}

	ok := "kms.backend=local kms.operation=%s outcome=ok"
	for name, want := range map[string]int64{
		"kpcrypt.kms.calls " + strings.Replace(ok, "%s", "wrap", 1):              3,
		"kpcrypt.kms.calls " + strings.Replace(ok, "%s", "unwrap", 1):            3, // one per file
		"kpcrypt.kms.calls " + strings.Replace(ok, "%s", "versions", 1):          1,
		"kpcrypt.kms.calls kms.backend=local kms.operation=unwrap outcome=error": 1,
		"kpcrypt.cache.hits":                  2, // files[2] again, and files[1] by the ReaderAt
		"kpcrypt.cache.misses":                3,
		"kpcrypt.cache.evictions reason=size": 1, // files[0], for files[2]: the cache holds 2
		"kpcrypt.bytes.sealed":                5103,
		"kpcrypt.bytes.opened":                5106 + 1000,
	} {
		if got := rec.sum(name); got != want {
			t.Errorf("%s: %d, want %d", name, got, want)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if got := rec.hists["kpcrypt.kms.duration "+strings.Replace(ok, "%s", "wrap", 1)]; got != 3 {
		t.Errorf("%d wrap durations, want 3", got)
	}
	var wraps, failed int
	for _, s := range rec.spans {
		if !s.ended {
			t.Errorf("span %s not ended", s.name)
		}
		if s.name == "kpcrypt.kms.wrap" {
			wraps++
		}
		if s.err {
			failed++
		}
		for _, kv := range s.attrs {
			if strings.Contains(kv.Value.Emit(), "/") {
				t.Errorf("span %s records %s=%s, a URI", s.name, kv.Key, kv.Value.Emit())
			}
		}
	}
	if wraps != 3 || failed != 1 || len(rec.spans) != 3+3+1+1 {
		t.Errorf("%d spans, %d wraps, %d failed", len(rec.spans), wraps, failed)
	}
}

// badKeyring offers kek for a slot of uri, which it cannot unwrap.
type badKeyring struct {
	uri string
	kek kms.KEK
}

func (b badKeyring) KEKsFor(_ context.Context, uri string) ([]kms.KEK, error) {
	if uri == b.uri {
		return []kms.KEK{b.kek}, nil
	}
	return nil, nil
}

// TestTelemetryRewrap: the KMS calls of a rewrap reach the providers given.
func TestTelemetryRewrap(t *testing.T) {
	ctx := context.Background()
	rec := newRecorder()
	k := newLocalKEK(t, "kek")
	p, _ := encryptFile(t, t.TempDir(), "f.kpc", 1000, k)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: KEKs{k}, Telemetry: rec.telemetry()}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"current_version", "unwrap", "wrap"} {
		if got := rec.sum("kpcrypt.kms.calls kms.backend=local kms.operation=" + op + " outcome=ok"); got != 1 {
			t.Errorf("%d %s calls, want 1", got, op)
		}
	}
}

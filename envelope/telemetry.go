package envelope

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Telemetry says where envelope reports what it does, through the
// OpenTelemetry API. A nil *Telemetry, or a nil provider, means
// OpenTelemetry's global provider ([otel.GetTracerProvider],
// [otel.GetMeterProvider]), which does nothing unless the application
// installs one. Providers are read at an Encrypter's, Decrypter's or
// DataKeyCache's first use, and at each [Rewrap].
//
// Each KMS call made by envelope (wrap, unwrap, versions, and in [Rewrap]
// current_version and rewrap) is a span named
// "kpcrypt.kms.<operation>" of kind client, and is counted:
//
//   - kpcrypt.kms.calls (counter) and kpcrypt.kms.duration (histogram, in
//     seconds), with the attributes kms.backend (the KEK URI's scheme:
//     "crn", "local", "pkcs11"), kms.operation, and outcome ("ok" or
//     "error"). No KEK URI is recorded, as one may hold a PIN.
//   - kpcrypt.cache.hits, kpcrypt.cache.misses and kpcrypt.cache.evictions
//     (counters) for a [DataKeyCache]; evictions carry the attribute reason,
//     "size" or "expired".
//   - kpcrypt.bytes.sealed and kpcrypt.bytes.opened (counters, in bytes):
//     the plaintext of each stream sealed, counted when its Writer closes
//     successfully, and the plaintext read from each Reader or ReaderAt.
//
// Retries inside a backend are not seen by envelope: they are part of one
// call's duration.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

const instrumentationName = "github.com/kpcrypt/kpcrypt/envelope"

// instruments are the tracer and the instruments of one owner. A nil
// *instruments records nothing.
type instruments struct {
	tracer                                 trace.Tracer
	kmsCalls                               metric.Int64Counter
	kmsDuration                            metric.Float64Histogram
	cacheHits, cacheMisses, cacheEvictions metric.Int64Counter
	bytesSealed, bytesOpened               metric.Int64Counter

	spanStart []trace.SpanStartOption // of every KMS call's span
	mu        sync.Mutex
	calls     map[callKey]*callAttrs // guarded by mu
}

// callKey names the attributes of a KMS call.
type callKey struct{ backend, op string }

// callAttrs are what kmsCall records of a kind of call, made once: so that
// a call under the global no-op providers costs no allocation.
type callAttrs struct {
	span      string
	attrs     []attribute.KeyValue
	ok, error metric.MeasurementOption
}

func (ins *instruments) attrsOf(backend, op string) *callAttrs {
	k := callKey{backend, op}
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if a := ins.calls[k]; a != nil {
		return a
	}
	if ins.calls == nil {
		ins.calls = map[callKey]*callAttrs{}
	}
	attrs := []attribute.KeyValue{attribute.String("kms.backend", backend), attribute.String("kms.operation", op)}
	with := func(outcome string) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(append(attrs[:len(attrs):len(attrs)], attribute.String("outcome", outcome))...))
	}
	a := &callAttrs{span: "kpcrypt.kms." + op, attrs: attrs, ok: with("ok"), error: with("error")}
	// Backends and operations are few; the bound is against misuse.
	if len(ins.calls) < 64 {
		ins.calls[k] = a
	}
	return a
}

// telemetryOnce makes an owner's instruments at its first use.
type telemetryOnce struct {
	once sync.Once
	ins  *instruments
}

func (o *telemetryOnce) get(t *Telemetry) *instruments {
	o.once.Do(func() { o.ins = newInstruments(t) })
	return o.ins
}

func newInstruments(t *Telemetry) *instruments {
	var tp trace.TracerProvider
	var mp metric.MeterProvider
	if t != nil {
		tp, mp = t.TracerProvider, t.MeterProvider
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(instrumentationName)
	ins := &instruments{tracer: tp.Tracer(instrumentationName),
		spanStart: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}}
	// An instrument the provider refuses is a no-op one: the API returns
	// one with the error, and telemetry never fails an operation.
	ins.kmsCalls, _ = m.Int64Counter("kpcrypt.kms.calls", metric.WithDescription("KMS calls made by kpcrypt envelope"))
	ins.kmsDuration, _ = m.Float64Histogram("kpcrypt.kms.duration", metric.WithUnit("s"), metric.WithDescription("Duration of KMS calls"))
	ins.cacheHits, _ = m.Int64Counter("kpcrypt.cache.hits", metric.WithDescription("Data key cache hits"))
	ins.cacheMisses, _ = m.Int64Counter("kpcrypt.cache.misses", metric.WithDescription("Data key cache misses"))
	ins.cacheEvictions, _ = m.Int64Counter("kpcrypt.cache.evictions", metric.WithDescription("Data keys evicted from the cache"))
	ins.bytesSealed, _ = m.Int64Counter("kpcrypt.bytes.sealed", metric.WithUnit("By"), metric.WithDescription("Plaintext bytes sealed"))
	ins.bytesOpened, _ = m.Int64Counter("kpcrypt.bytes.opened", metric.WithUnit("By"), metric.WithDescription("Plaintext bytes opened"))
	return ins
}

// kmsCall runs call, a KMS operation on the KEK named by uri, in a span,
// and counts it.
func (ins *instruments) kmsCall(ctx context.Context, op, uri string, call func(context.Context) error) error {
	if ins == nil {
		return call(ctx)
	}
	a := ins.attrsOf(kms.Scheme(uri), op)
	ctx, span := ins.tracer.Start(ctx, a.span, ins.spanStart...)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(a.attrs...)
	}
	start := time.Now()
	err := call(ctx)
	elapsed := time.Since(start)
	set := a.ok
	if err != nil {
		set = a.error
		span.RecordError(err)
		span.SetStatus(codes.Error, op+" failed")
	}
	ins.kmsCalls.Add(ctx, 1, set)
	ins.kmsDuration.Record(ctx, elapsed.Seconds(), set)
	return err
}

// Counters, for [instruments.count].
func sealedCounter(ins *instruments) metric.Int64Counter { return ins.bytesSealed }
func openedCounter(ins *instruments) metric.Int64Counter { return ins.bytesOpened }
func hitCounter(ins *instruments) metric.Int64Counter    { return ins.cacheHits }
func missCounter(ins *instruments) metric.Int64Counter   { return ins.cacheMisses }

// countEviction counts a DEK evicted from a cache, for the given reason.
func (ins *instruments) countEviction(reason string) {
	if ins != nil {
		ins.cacheEvictions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", reason)))
	}
}

// count adds n to the counter c of ins.
func (ins *instruments) count(c func(*instruments) metric.Int64Counter, n int64) {
	if ins != nil && n != 0 {
		c(ins).Add(context.Background(), n)
	}
}

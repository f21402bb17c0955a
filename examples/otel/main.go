// Command otel seals and opens a few objects with kpcrypt under a local KEK
// and prints the OpenTelemetry spans and metrics that package envelope
// emits, with the SDK's stdout exporters.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

func main() {
	objects := flag.Int("objects", 4, "how many objects to seal and open")
	flag.Parse()
	dir, err := os.MkdirTemp("", "kpcrypt-otel-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := run(context.Background(), dir, *objects, os.Stdout, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run installs a tracer provider exporting to traces and a meter provider
// exporting to metrics, seals and opens objects under a new local KEK made in
// dir, and shuts both providers down, which flushes them.
func run(ctx context.Context, dir string, objects int, traces, metrics io.Writer) (err error) {
	spanExp, err := stdouttrace.New(stdouttrace.WithWriter(traces), stdouttrace.WithPrettyPrint())
	if err != nil {
		return err
	}
	metricExp, err := stdoutmetric.New(stdoutmetric.WithWriter(metrics), stdoutmetric.WithPrettyPrint())
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spanExp))
	// The periodic reader also exports once at shutdown.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp)))
	defer func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, tp.Shutdown(shutdown), mp.Shutdown(shutdown))
	}()
	tel := &envelope.Telemetry{TracerProvider: tp, MeterProvider: mp}

	ctx, span := tp.Tracer("github.com/kpcrypt/kpcrypt/examples/otel").Start(ctx, "seal-and-open")
	defer span.End()

	kek, err := local.Generate(filepath.Join(dir, "kek.json"))
	if err != nil {
		return err
	}
	// Two objects share each DEK, so half the opens are cache hits; a cache
	// of one entry evicts a DEK when the next one comes.
	enc := &envelope.Encrypter{
		KEKs:      []kms.KEK{kek},
		Reuse:     &envelope.DataKeyReuse{MaxStreams: 2, Ahead: 1},
		Telemetry: tel,
	}
	cache := envelope.NewDataKeyCache(1, time.Minute)
	cache.Telemetry = tel
	dec := &envelope.Decrypter{Keyring: envelope.KEKs{kek}, Cache: cache, Telemetry: tel}

	sealed := make([][]byte, objects)
	for i := range sealed {
		plaintext := fmt.Appendf(nil, "object %d: %s", i, bytes.Repeat([]byte("data "), 100))
		if sealed[i], err = enc.Seal(ctx, plaintext); err != nil {
			return err
		}
	}
	for i, ct := range sealed {
		pt, err := dec.Open(ctx, ct)
		if err != nil {
			return fmt.Errorf("object %d: %w", i, err)
		}
		if want := fmt.Sprintf("object %d: ", i); !bytes.HasPrefix(pt, []byte(want)) {
			return fmt.Errorf("object %d: wrong plaintext", i)
		}
	}
	return nil
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	var traces, metrics bytes.Buffer
	if err := run(context.Background(), t.TempDir(), 4, &traces, &metrics); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"seal-and-open", "kpcrypt.kms.wrap", "kpcrypt.kms.unwrap"} {
		if !strings.Contains(traces.String(), `"Name": "`+name+`"`) {
			t.Errorf("no span %s in the traces:\n%s", name, traces.String())
		}
	}
	for _, name := range []string{
		"kpcrypt.kms.calls", "kpcrypt.kms.duration",
		"kpcrypt.cache.hits", "kpcrypt.cache.misses", "kpcrypt.cache.evictions",
		"kpcrypt.bytes.sealed", "kpcrypt.bytes.opened",
	} {
		if !strings.Contains(metrics.String(), `"Name": "`+name+`"`) {
			t.Errorf("no metric %s in the metrics:\n%s", name, metrics.String())
		}
	}
}

package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
	"github.com/kpcrypt/kpcrypt/kplocal/kpclient"
)

// TestMain runs the tests' pipelines on prism, Beam's portable runner, in
// this process (loopback: the SDK workers are goroutines here, and read
// this process's environment).
func TestMain(m *testing.M) {
	ptest.MainWithDefault(m, "prism")
}

// TestPipeline runs the whole pipeline against kplocal: the pipeline's own
// assertions check every object's records after sealing and after the
// rewrap, and the test checks what it cost in Key Protect calls.
func TestPipeline(t *testing.T) {
	srv, err := kplocal.Start(kplocal.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	id, err := srv.CreateKey("beam-test", true)
	if err != nil {
		t.Fatal(err)
	}
	info := srv.ClientInfo()
	t.Setenv(keyprotect.EnvAPIKey, info.APIKey)
	t.Setenv(keyprotect.EnvKPEndpoint, info.BaseURL)
	t.Setenv(keyprotect.EnvIAMEndpoint, info.IAMURL)

	cfg := Config{
		KEK:     srv.KeyCRN(id),
		Dir:     t.TempDir(),
		Dataset: "events",
		Objects: 40,
		Records: 10,
	}
	p, s := beam.NewPipelineWithRoot()
	Build(s, cfg)
	if err := ptest.Run(p); err != nil {
		t.Fatalf("pipeline failed: %v", err)
	}

	st := srv.Stats()
	checkObjects(t, srv, cfg)
	openers, encrypters := workerCounts()
	t.Logf("%d objects of %d records; %d openers, %d encrypters; kplocal: %d tokens, %d wraps, %d unwraps, %d rotations, %d rewraps, %d version lists",
		cfg.Objects, cfg.Records, openers, encrypters, st.Tokens, st.Wrap, st.Unwrap, st.Rotate, st.Rewrap, st.Versions)

	// Every worker of the in-process runner is in this process, so
	// there is one Opener and one Encrypter, whatever the number of
	// bundles and DoFn instances.
	if openers != 1 || encrypters != 1 {
		t.Errorf("%d openers and %d encrypters, want one of each per worker process", openers, encrypters)
	}
	// One IAM token per Opener, one wrap per worker's Encrypter (its data
	// key serves MaxStreams = Objects objects): not one per object.
	if st.Tokens != int64(openers) {
		t.Errorf("%d IAM tokens, want %d (one per worker)", st.Tokens, openers)
	}
	// DataKeyReuse wraps the next data key ahead of need (at most
	// DataKeyReuse.Ahead, 8 by default, per Encrypter), so a worker may
	// have wrapped a key it never used: a handful, never one per object.
	if st.Wrap < int64(encrypters) || st.Wrap > int64(encrypters)*(1+8) {
		t.Errorf("%d wraps, want %d to %d (per worker), for %d objects", st.Wrap, encrypters, encrypters*9, cfg.Objects)
	}
	if st.Rotate != 1 {
		t.Errorf("%d rotations, want 1", st.Rotate)
	}
	// Each object's slot was rewrapped at most once; a rewrap that knows
	// shared data keys needs fewer.
	if st.Rewrap < 1 || st.Rewrap > int64(cfg.Objects) {
		t.Errorf("%d rewraps, want 1 to %d", st.Rewrap, cfg.Objects)
	}
	// The worker's DEK cache unwraps each distinct wrapped DEK once: the
	// wraps' before the rotation, the rewraps' after it.
	// (A key wrapped ahead and never used is never unwrapped.)
	if most := st.Wrap + st.Rewrap; st.Unwrap < 1+st.Rewrap || st.Unwrap > most {
		t.Errorf("%d unwraps, want %d to %d (one per distinct wrapped data key in use: up to %d wraps + %d rewraps)",
			st.Unwrap, 1+st.Rewrap, most, st.Wrap, st.Rewrap)
	}
	if st.Faults != 0 || st.Unauthorized != 0 {
		t.Errorf("%d faults and %d unauthorized requests, want none", st.Faults, st.Unauthorized)
	}
}

// checkObjects checks, outside the pipeline, that Dir holds exactly the
// objects, with no temporary file left, each with one slot at the root
// key's current version.
func checkObjects(t *testing.T, srv *kplocal.Running, cfg Config) {
	t.Helper()
	client, err := kpclient.Client(srv)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := keyprotect.NewKEK(client, cfg.KEK)
	if err != nil {
		t.Fatal(err)
	}
	current, err := kek.CurrentVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != cfg.Objects {
		t.Errorf("%d files in the directory, want %d objects", len(entries), cfg.Objects)
	}
	for i := range cfg.Objects {
		f, err := os.Open(filepath.Join(cfg.Dir, objectName(i)))
		if err != nil {
			t.Error(err)
			continue
		}
		h, err := envelope.Inspect(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", objectName(i), err)
			continue
		}
		if len(h.Slots) != 1 || h.Slots[0].KEK != cfg.KEK || h.Slots[0].KeyVersion != current {
			t.Errorf("%s: slots %+v, want one for %s at version %s", objectName(i), h.Slots, cfg.KEK, current)
		}
		if h.Context["dataset"] != cfg.Dataset {
			t.Errorf("%s: context %v, want dataset %s", objectName(i), h.Context, cfg.Dataset)
		}
	}
}

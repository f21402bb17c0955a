package main

import (
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
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
	if st.Wrap != int64(encrypters) {
		t.Errorf("%d wraps, want %d (one per worker), for %d objects", st.Wrap, encrypters, cfg.Objects)
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
	if want := st.Wrap + st.Rewrap; st.Unwrap != want {
		t.Errorf("%d unwraps, want %d (one per distinct wrapped data key: %d wraps + %d rewraps)",
			st.Unwrap, want, st.Wrap, st.Rewrap)
	}
	if st.Faults != 0 || st.Unauthorized != 0 {
		t.Errorf("%d faults and %d unauthorized requests, want none", st.Faults, st.Unauthorized)
	}
}

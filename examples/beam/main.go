// Command beam is an Apache Beam pipeline that encrypts a generated data
// set with kpcrypt under a Key Protect root key, with data-key reuse per
// worker, reads it back and checks it, rotates the root key and rewraps
// every object to the new version. See README.md.
//
// Without -kek it starts kplocal, an in-process Key Protect, makes a root
// key there and points the workers' environment at it: that suits the
// in-process runners (prism, the default, and direct). With -kek the
// workers read their credentials from IBMCLOUD_API_KEY,
// IBMCLOUD_KP_ENDPOINT and IBMCLOUD_IAM_ENDPOINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/x/beamx"

	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
	"github.com/kpcrypt/kpcrypt/kplocal"
)

var (
	kek        = flag.String("kek", "", "CRN of the Key Protect root key; empty starts kplocal in this process")
	dir        = flag.String("dir", "", "directory the objects go to (required; shared by every worker)")
	dataset    = flag.String("dataset", "events", "the encryption context's dataset")
	objects    = flag.Int("objects", 40, "number of objects")
	records    = flag.Int("records", 10, "records per object")
	maxStreams = flag.Int("max_streams", 0, "objects per data key on a worker; 0 means -objects")
)

func main() {
	flag.Parse()
	beam.Init()
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	ctx := context.Background()
	cfg := Config{KEK: *kek, Dir: *dir, Dataset: *dataset, Objects: *objects, Records: *records, MaxStreams: *maxStreams}

	var local *kplocal.Running
	if cfg.KEK == "" {
		var err error
		if local, cfg.KEK, err = startKPLocal(); err != nil {
			log.Fatal(err)
		}
		defer local.Close()
	}

	p, s := beam.NewPipelineWithRoot()
	Build(s, cfg)
	if err := beamx.Run(ctx, p); err != nil {
		log.Fatalf("pipeline failed: %v", err)
	}
	fmt.Printf("%d objects of %d records sealed, checked, rewrapped and checked again in %s\n",
		cfg.Objects, cfg.Records, cfg.Dir)
	if local != nil {
		st := local.Stats()
		fmt.Printf("Key Protect calls: %d tokens, %d wraps, %d unwraps, %d rotations, %d rewraps, %d version lists\n",
			st.Tokens, st.Wrap, st.Unwrap, st.Rotate, st.Rewrap, st.Versions)
	}
}

// startKPLocal starts kplocal, creates a root key and sets the environment
// the workers read, which on the in-process runners is this process's. It
// returns the server and the key's CRN.
func startKPLocal() (*kplocal.Running, string, error) {
	srv, err := kplocal.Start(kplocal.Config{})
	if err != nil {
		return nil, "", err
	}
	id, err := srv.CreateKey("beam-example", true)
	if err != nil {
		srv.Close()
		return nil, "", err
	}
	info := srv.ClientInfo()
	for k, v := range map[string]string{
		keyprotect.EnvAPIKey:      info.APIKey,
		keyprotect.EnvKPEndpoint:  info.BaseURL,
		keyprotect.EnvIAMEndpoint: info.IAMURL,
	} {
		if err := os.Setenv(k, v); err != nil {
			srv.Close()
			return nil, "", err
		}
	}
	return srv, srv.KeyCRN(id), nil
}

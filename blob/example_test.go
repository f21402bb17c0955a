package blob_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"gocloud.dev/blob/memblob"

	kpblob "github.com/kpcrypt/kpcrypt/blob"
	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// Encrypt an object in the detached layout, read part of it back over
// ranged reads, then add a KEK and remove the first by rewriting its small
// header object alone.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kpcrypt-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	old, err := local.Generate(filepath.Join(dir, "old.json"))
	if err != nil {
		log.Fatal(err)
	}
	next, err := local.Generate(filepath.Join(dir, "new.json"))
	if err != nil {
		log.Fatal(err)
	}

	bucket := memblob.OpenBucket(nil) // or s3blob, gcsblob, azureblob, fileblob
	defer bucket.Close()

	// Encrypt.
	plaintext := "records of a data pipeline, one object among millions"
	e := &envelope.Encrypter{KEKs: []kms.KEK{old}}
	w, err := kpblob.NewWriter(ctx, bucket, "day/part-0001", e, int64(len(plaintext)), &kpblob.WriterOptions{Detached: true})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.Copy(w, strings.NewReader(plaintext)); err != nil {
		w.Abort(err) // no object is created
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	// Read at an offset.
	ra, err := kpblob.NewReaderAt(ctx, bucket, "day/part-0001", &envelope.Decrypter{Keyring: envelope.KEKs{old}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 11)
	if _, err := ra.ReadAt(buf, 11); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", buf)

	// Rotate to another KEK without uploading the body again.
	res, err := kpblob.Rewrap(ctx, bucket, "day/part-0001", &envelope.RewrapOptions{
		Keyring: envelope.KEKs{old},
		To:      []kms.KEK{next},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("changed:", res.Changed)

	r, err := kpblob.NewReader(ctx, bucket, "day/part-0001", &envelope.Decrypter{Keyring: envelope.KEKs{next}})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(out))

	// The objects in the bucket: the body and its one header object.
	it := bucket.List(nil)
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(o.Key)
	}
	// Output:
	// a data pipe
	// changed: true
	// records of a data pipeline, one object among millions
	// day/part-0001
	// day/part-0001.kpch.00000000000000000002
}

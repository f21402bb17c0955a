package envelope_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/local"
)

// A data pipeline gathers records into object-sized blobs and encrypts
// each under a KEK. With data-key reuse, one KMS call serves many blobs;
// readers decrypt the blobs in parallel, and a shared DEK cache saves the
// unwraps. The encryption context names the dataset, and a reader that
// requires another dataset is refused.
func Example_pipeline() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kpcrypt-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	kek, err := local.Generate(filepath.Join(dir, "kek.json")) // in production: a Key Protect KEK
	if err != nil {
		log.Fatal(err)
	}
	dataset := map[string]string{"dataset": "events"}

	enc := &envelope.Encrypter{
		KEKs:    []kms.KEK{kek},
		Context: dataset,
		Reuse:   &envelope.DataKeyReuse{MaxStreams: 1000},
	}
	var blobs [][]byte
	var batch bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&batch, `{"event": %d}`+"\n", i)
		if (i+1)%100 == 0 { // 100 records per object
			blob, err := enc.Seal(ctx, batch.Bytes())
			if err != nil {
				log.Fatal(err)
			}
			blobs = append(blobs, blob)
			batch.Reset()
		}
	}

	dec := &envelope.Decrypter{
		Keyring: envelope.KEKs{kek},
		Context: dataset,
		Cache:   envelope.NewDataKeyCache(0, 0),
	}
	records := make([]int, len(blobs))
	var wg sync.WaitGroup
	for i, blob := range blobs {
		wg.Go(func() {
			pt, err := dec.Open(ctx, blob)
			if err != nil {
				log.Fatal(err)
			}
			records[i] = bytes.Count(pt, []byte("\n"))
		})
	}
	wg.Wait()
	total := 0
	for _, n := range records {
		total += n
	}
	fmt.Printf("%d objects, %d records, %d cached data key\n", len(blobs), total, dec.Cache.Len())

	other := &envelope.Decrypter{Keyring: envelope.KEKs{kek}, Context: map[string]string{"dataset": "billing"}}
	_, err = other.Open(ctx, blobs[0])
	fmt.Println(err)

	// Output:
	// 10 objects, 1000 records, 1 cached data key
	// envelope: encryption context mismatch: dataset is "events", want "billing"
}

// A stream of records of unknown total size goes into one object through a
// Writer, and comes back through a Reader, record by record.
func ExampleEncrypter_NewWriter() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kpcrypt-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	kek, err := local.Generate(filepath.Join(dir, "kek.json"))
	if err != nil {
		log.Fatal(err)
	}

	var object bytes.Buffer
	w, err := (&envelope.Encrypter{KEKs: []kms.KEK{kek}}).NewWriter(ctx, &object, envelope.UnknownSize)
	if err != nil {
		log.Fatal(err)
	}
	bw := bufio.NewWriter(w)
	for i := range 50_000 {
		fmt.Fprintf(bw, "record %d\n", i)
	}
	if err := bw.Flush(); err != nil {
		// Abandon the object: without its final chunk it never decrypts.
		w.Abort(err)
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := envelope.NewReader(ctx, &object, envelope.KEKs{kek})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	sc := bufio.NewScanner(r)
	n, last := 0, ""
	for sc.Scan() {
		n, last = n+1, sc.Text()
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, "records; the last is", last)
	// Output:
	// 50000 records; the last is record 49999
}

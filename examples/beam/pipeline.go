package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/transforms/stats"

	"github.com/kpcrypt/kpcrypt/envelope"
	"github.com/kpcrypt/kpcrypt/kms"
	"github.com/kpcrypt/kpcrypt/kms/keyprotect"
)

func init() {
	register.DoFn3x1[context.Context, int, func(string), error](&sealFn{})
	register.DoFn3x1[context.Context, string, func(int), error](&openFn{})
	register.DoFn4x1[context.Context, []byte, int, func(string), error](&rotateFn{})
	register.DoFn4x1[context.Context, string, string, func(string), error](&rewrapFn{})
	register.DoFn4x1[context.Context, string, string, func(int), error](&openRewrappedFn{})
	register.Emitter1[string]()
	register.Emitter1[int]()
}

// Config describes the data set and the key that protects it. It travels
// with every DoFn to the workers, so it holds no secret: the workers find
// their Key Protect credentials in their environment (IBMCLOUD_API_KEY,
// IBMCLOUD_KP_ENDPOINT, IBMCLOUD_IAM_ENDPOINT; see keyprotect.ConfigFromEnv).
type Config struct {
	// KEK is the CRN of the Key Protect root key that wraps the data keys.
	KEK string
	// Dir is where the objects go, one plain file each. Every worker must
	// see it: a local directory on the in-process runners, a shared file
	// system elsewhere.
	Dir string
	// Dataset is the encryption context's "dataset" value; readers require
	// it.
	Dataset string
	// Objects is the number of objects, and Records the number of records
	// batched into each.
	Objects, Records int
	// MaxStreams is how many objects one data key may serve on a worker
	// (envelope.DataKeyReuse); zero means Objects, that is one wrap per
	// worker.
	MaxStreams int
}

// Build adds the pipeline to s:
//
//  1. seal: Objects objects of Records generated records each, encrypted
//     under KEK with data-key reuse, one data key per worker;
//  2. open: every object decrypted (one DEK cache per worker) and compared
//     with the records it was made from, and the record count checked;
//  3. rotate: once the count is right, the root key rotated, once;
//  4. rewrap: every object's key slot moved to the new key version, in
//     place (the body is not rewritten);
//  5. reopen: every object decrypted again, refusing any slot older than
//     the new version, and checked.
//
// Steps 3 to 5 wait for the steps before them through side inputs, the
// pipeline's barriers. It returns the names of the checked objects.
func Build(s beam.Scope, cfg Config) beam.PCollection {
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = cfg.Objects
	}
	s = s.Scope("kpcrypt")
	indices := make([]int, cfg.Objects)
	for i := range indices {
		indices[i] = i
	}
	// Reshuffle spreads the objects over the workers; the list alone
	// would be one bundle.
	objects := beam.Reshuffle(s, beam.CreateList(s, indices))
	names := beam.ParDo(s.Scope("seal"), &sealFn{Config: cfg}, objects)
	passert.Count(s, names, "sealed", cfg.Objects)

	total := stats.Sum(s, beam.ParDo(s.Scope("open"), &openFn{Config: cfg}, names))
	passert.Equals(s, total, cfg.Objects*cfg.Records)

	version := beam.ParDo(s.Scope("rotate"), &rotateFn{Config: cfg}, beam.Impulse(s),
		beam.SideInput{Input: total})
	rewrapped := beam.ParDo(s.Scope("rewrap"), &rewrapFn{Config: cfg}, names,
		beam.SideInput{Input: version})
	passert.Count(s, rewrapped, "rewrapped", cfg.Objects)

	checked := beam.ParDo(s.Scope("reopen"), &openRewrappedFn{Config: cfg}, rewrapped,
		beam.SideInput{Input: version})
	passert.Equals(s, stats.Sum(s, checked), cfg.Objects*cfg.Records)
	return rewrapped
}

// objectRecords returns the plaintext of object i: n JSON lines that a reader
// can make again to check what it decrypted.
func objectRecords(i, n int) []byte {
	var b bytes.Buffer
	for j := range n {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d/%d", i, j))
		fmt.Fprintf(&b, `{"object":%d,"record":%d,"value":"%x"}`+"\n", i, j, sum[:8])
	}
	return b.Bytes()
}

// objectName is the file name of object i.
func objectName(i int) string { return fmt.Sprintf("part-%05d.kpc", i) }

// objectIndex parses objectName.
func objectIndex(name string) (int, error) {
	var i int
	if _, err := fmt.Sscanf(name, "part-%05d.kpc", &i); err != nil || objectName(i) != name {
		return 0, fmt.Errorf("not an object name: %q", name)
	}
	return i, nil
}

// encryptionContext is the encryption context of the data set.
func (c Config) encryptionContext() map[string]string { return map[string]string{"dataset": c.Dataset} }

// sealFn encrypts one object per element. Its Setup takes the worker's
// Encrypter, so that every bundle on a worker shares one data key.
type sealFn struct {
	Config Config
	enc    *envelope.Encrypter
}

// Setup finds the worker's Encrypter for the configuration.
func (f *sealFn) Setup(ctx context.Context) error {
	enc, err := workerEncrypter(ctx, f.Config)
	f.enc = enc
	return err
}

// ProcessElement seals object i, writes it to Dir and emits its name. A
// retried bundle writes the same names again: the write is atomic, so an
// object is always whole.
func (f *sealFn) ProcessElement(ctx context.Context, i int, emit func(string)) error {
	obj, err := f.enc.Seal(ctx, objectRecords(i, f.Config.Records))
	if err != nil {
		return fmt.Errorf("sealing object %d: %w", i, err)
	}
	name := objectName(i)
	if err := writeFileAtomic(filepath.Join(f.Config.Dir, name), obj); err != nil {
		return err
	}
	emit(name)
	return nil
}

// openFn decrypts and checks one object per element, with the worker's
// DEK cache.
type openFn struct {
	Config Config
	dec    *envelope.Decrypter
}

// Setup builds a Decrypter on the worker's KEK and DEK cache.
func (f *openFn) Setup(ctx context.Context) error {
	var err error
	f.dec, err = workerDecrypter(ctx, f.Config, "")
	return err
}

// ProcessElement checks object name and emits its number of records.
func (f *openFn) ProcessElement(ctx context.Context, name string, emit func(int)) error {
	return check(ctx, f.dec, f.Config, name, emit)
}

// rotateFn rotates the root key, once, after the data set has been checked,
// and emits the new key version. Its side input is the number of records
// read back: it refuses to rotate unless every record was.
type rotateFn struct {
	Config Config
}

// ProcessElement rotates the KEK. On a runner that retries a failed bundle
// after the rotation succeeded, the key is rotated again, which is harmless:
// the rewrap moves every object to whatever version is current.
func (f *rotateFn) ProcessElement(ctx context.Context, _ []byte, verified int, emit func(string)) error {
	if want := f.Config.Objects * f.Config.Records; verified != want {
		return fmt.Errorf("not rotating: %d records read back, want %d", verified, want)
	}
	kek, err := workerKEK(ctx, f.Config.KEK)
	if err != nil {
		return err
	}
	r, ok := kek.(kms.Rotator)
	if !ok {
		return fmt.Errorf("KEK %s cannot rotate", f.Config.KEK)
	}
	v, err := r.Rotate(ctx)
	if err != nil {
		return fmt.Errorf("rotating the root key: %w", err)
	}
	emit(v)
	return nil
}

// rewrapFn moves one object's key slot to the root key's current version,
// in place: the KMS rewraps the data key on its side, and only the slot
// table, a few KiB, is written.
type rewrapFn struct {
	Config Config
	opts   *envelope.RewrapOptions
}

// Setup opens the worker's KEK.
func (f *rewrapFn) Setup(ctx context.Context) error {
	kek, err := workerKEK(ctx, f.Config.KEK)
	f.opts = &envelope.RewrapOptions{Keyring: envelope.KEKs{kek}}
	return err
}

// ProcessElement rewraps object name, checks that its slot is now at
// version (the rotation's side input) and emits the name.
func (f *rewrapFn) ProcessElement(ctx context.Context, name, version string, emit func(string)) error {
	res, err := envelope.RewrapPath(ctx, filepath.Join(f.Config.Dir, name), f.opts)
	if err != nil {
		return fmt.Errorf("rewrapping %s: %w", name, err)
	}
	for _, c := range res.Slots {
		if c.URI == f.Config.KEK && c.NewVersion != version {
			return fmt.Errorf("%s: slot %s after rewrap, want version %s", name, c.NewVersion, version)
		}
	}
	emit(name)
	return nil
}

// openRewrappedFn decrypts and checks one rewrapped object per element,
// refusing a slot older than the rotation's version (its side input).
type openRewrappedFn struct {
	Config Config
	// decs holds a Decrypter per version seen; Beam runs one bundle at a
	// time on a DoFn instance.
	decs map[string]*envelope.Decrypter
}

// ProcessElement checks object name, opened under version or later, and
// emits its number of records.
func (f *openRewrappedFn) ProcessElement(ctx context.Context, name, version string, emit func(int)) error {
	dec := f.decs[version]
	if dec == nil {
		var err error
		if dec, err = workerDecrypter(ctx, f.Config, version); err != nil {
			return err
		}
		if f.decs == nil {
			f.decs = map[string]*envelope.Decrypter{}
		}
		f.decs[version] = dec
	}
	return check(ctx, dec, f.Config, name, emit)
}

// check decrypts object name, compares it with the records it was made
// from, and emits their number.
func check(ctx context.Context, dec *envelope.Decrypter, cfg Config, name string, emit func(int)) error {
	i, err := objectIndex(name)
	if err != nil {
		return err
	}
	obj, err := os.ReadFile(filepath.Join(cfg.Dir, name))
	if err != nil {
		return err
	}
	pt, err := dec.Open(ctx, obj)
	if err != nil {
		return fmt.Errorf("opening %s: %w", name, err)
	}
	if !bytes.Equal(pt, objectRecords(i, cfg.Records)) {
		return fmt.Errorf("%s: decrypted records differ from those sealed", name)
	}
	emit(bytes.Count(pt, []byte("\n")))
	return nil
}

// writeFileAtomic writes data to path through a synced temporary file in
// the same directory and a rename, so that path holds the whole object or
// none of it.
func writeFileAtomic(path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// worker holds what the DoFns of one worker process share: one Key Protect
// Opener (one client and one IAM token per instance), the KEKs it opened,
// one Encrypter per configuration, whose reused data key serves every
// bundle, and one DEK cache. Beam makes a DoFn instance per bundle
// processor, so per-instance state would cost a wrap, an unwrap and a token
// each; package state lives as long as the worker.
var worker struct {
	mu         sync.Mutex
	openers    map[endpoint]*keyprotect.Opener
	keks       map[kekID]kms.KEK
	encrypters map[Config]*envelope.Encrypter
	cache      *envelope.DataKeyCache
}

// endpoint is what the environment gives a worker: the Key Protect and IAM
// endpoints and the API key. The key stays in memory, as the Opener's does.
type endpoint struct{ baseURL, iamURL, apiKey string }

// kekID names a KEK opened on an endpoint.
type kekID struct {
	endpoint
	crn string
}

// workerKEK opens the KEK crn with the worker's Opener, built from the
// environment on first use.
func workerKEK(ctx context.Context, crn string) (kms.KEK, error) {
	worker.mu.Lock()
	defer worker.mu.Unlock()
	cfg := keyprotect.ConfigFromEnv(os.Getenv)
	ep := endpoint{cfg.BaseURL, cfg.IAMURL, cfg.APIKey}
	o := worker.openers[ep]
	if o == nil {
		if cfg.APIKey == "" {
			return nil, fmt.Errorf("no Key Protect API key: set %s on the workers", keyprotect.EnvAPIKey)
		}
		o = &keyprotect.Opener{Config: cfg}
		if worker.openers == nil {
			worker.openers = map[endpoint]*keyprotect.Opener{}
			worker.keks = map[kekID]kms.KEK{}
		}
		worker.openers[ep] = o
	}
	id := kekID{ep, crn}
	if kek := worker.keks[id]; kek != nil {
		return kek, nil
	}
	// Open makes no KMS call (the Opener has no Route): holding the lock
	// across it stalls no one.
	kek, err := o.Open(ctx, crn)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", crn, err)
	}
	worker.keks[id] = kek
	return kek, nil
}

// workerEncrypter returns the worker's Encrypter for cfg.
func workerEncrypter(ctx context.Context, cfg Config) (*envelope.Encrypter, error) {
	kek, err := workerKEK(ctx, cfg.KEK)
	if err != nil {
		return nil, err
	}
	worker.mu.Lock()
	defer worker.mu.Unlock()
	if enc := worker.encrypters[cfg]; enc != nil {
		return enc, nil
	}
	enc := &envelope.Encrypter{
		KEKs:    []kms.KEK{kek},
		Context: cfg.encryptionContext(),
		// Small objects: one chunk, sealed on the calling goroutine.
		Workers: 1,
		Reuse: &envelope.DataKeyReuse{
			MaxStreams: cfg.MaxStreams,
			// Renewal is by count here, not by the clock.
			MaxAge: time.Hour,
		},
	}
	if worker.encrypters == nil {
		worker.encrypters = map[Config]*envelope.Encrypter{}
	}
	worker.encrypters[cfg] = enc
	return enc, nil
}

// workerDecrypter returns a Decrypter for cfg on the worker's KEK and DEK
// cache. A non-empty minVersion refuses slots older than that version.
func workerDecrypter(ctx context.Context, cfg Config, minVersion string) (*envelope.Decrypter, error) {
	kek, err := workerKEK(ctx, cfg.KEK)
	if err != nil {
		return nil, err
	}
	worker.mu.Lock()
	defer worker.mu.Unlock()
	if worker.cache == nil {
		worker.cache = envelope.NewDataKeyCache(0, 0)
	}
	dec := &envelope.Decrypter{
		Keyring: envelope.KEKs{kek},
		Context: cfg.encryptionContext(),
		Workers: 1,
		Cache:   worker.cache,
	}
	if minVersion != "" {
		dec.MinKeyVersions = map[string]string{cfg.KEK: minVersion}
	}
	return dec, nil
}

// workerCounts returns how many Openers and Encrypters this process made:
// each Opener costs an IAM token, and each Encrypter a wrap per MaxStreams
// objects.
func workerCounts() (openers, encrypters int) {
	worker.mu.Lock()
	defer worker.mu.Unlock()
	return len(worker.openers), len(worker.encrypters)
}

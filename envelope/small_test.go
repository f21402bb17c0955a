package envelope

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/kms"
)

// TestSmallObjectOverhead: a 4 KiB object with one Key Protect slot grows
// by at most 1.3 KiB, the first one an Encrypter makes and the next, with a
// fresh DEK or a shared one; its slots can be rotated in place, and a slot
// that does not fit is refused in place with ErrSlotTableFull (RewrapPath
// then rewrites the file: grow_test.go). Files of unknown size
// or of SmallFileSize keep the default room.
func TestSmallObjectOverhead(t *testing.T) {
	ctx := context.Background()
	_, kek, keyring := slowKP(t, 0)
	const limit = 1331 // 1.3 KiB
	pt := testPlaintext(4096)
	for _, e := range []*Encrypter{
		{KEKs: []kms.KEK{kek}},
		{KEKs: []kms.KEK{kek}, Reuse: &DataKeyReuse{MaxAge: time.Hour}},
	} {
		for i := range 2 {
			ct, err := e.Seal(ctx, pt)
			if err != nil {
				t.Fatal(err)
			}
			h, err := format.ReadHeader(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			slot := h.Table().Slots[0]
			t.Logf("reuse %v, file %d: %d bytes of overhead, slot tables of %d bytes, one slot of %d bytes",
				e.Reuse != nil, i, len(ct)-len(pt), h.Core.SlotTableSize, slot.Size())
			if over := len(ct) - len(pt); over > limit {
				t.Fatalf("a 4 KiB object grew by %d bytes, over %d", over, limit)
			}
			if room := h.Table().Room(h.Core.SlotTableSize); room < SlotRotationRoom {
				t.Fatalf("%d bytes of room for a rotation, want %d", room, SlotRotationRoom)
			}
			if got, err := (&Decrypter{Keyring: keyring}).Open(ctx, ct); err != nil || !bytes.Equal(got, pt) {
				t.Fatal(err)
			}
		}
	}

	// A rotation fits in place; another slot does not.
	p := filepath.Join(t.TempDir(), "small.kpc")
	ct, err := Seal(ctx, pt, kek)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, ct, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := kek.(kms.Rotator).Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := RewrapPath(ctx, p, &RewrapOptions{Keyring: keyring}); err != nil || !res.Changed {
		t.Fatalf("rotating the slot of a small file: %v", err)
	}
	add := &RewrapOptions{Keyring: keyring, Add: []kms.KEK{newLocalKEK(t, "more")}}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Rewrap(ctx, f, add); !errors.Is(err, ErrSlotTableFull) {
		t.Fatalf("adding a slot to a small file in place: %v", err)
	}
	if got, err := (&Decrypter{Keyring: keyring}).Open(ctx, mustRead(t, p)); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("after the refused rewrap: %v", err)
	}

	// Unknown size, SmallFileSize and more, or an explicit size keep the room.
	for _, tc := range []struct {
		name string
		size int64
		e    *Encrypter
		want int
	}{
		{"unknown size", UnknownSize, &Encrypter{KEKs: []kms.KEK{kek}}, DefaultSlotTableSize},
		{"SmallFileSize", SmallFileSize, &Encrypter{KEKs: []kms.KEK{kek}}, DefaultSlotTableSize},
		{"explicit", 10, &Encrypter{KEKs: []kms.KEK{kek}, SlotTableSize: 1024}, 1024},
	} {
		var buf bytes.Buffer
		w, err := tc.e.NewWriter(ctx, &buf, tc.size)
		if err != nil {
			t.Fatal(err)
		}
		w.Abort(nil)
		h, err := format.ReadHeader(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if h.Core.SlotTableSize != tc.want {
			t.Errorf("%s: slot tables of %d bytes, want %d", tc.name, h.Core.SlotTableSize, tc.want)
		}
	}
}

// TestSmallTableEstimateShort: when a KEK's slot is larger than estimated,
// the table is sized to it and the DEK wrapped again.
func TestSmallTableEstimateShort(t *testing.T) {
	ctx := context.Background()
	k := &bigSlotKEK{countingKEK: countingKEK{KEK: newLocalKEK(t, "kek")}}
	e := &Encrypter{KEKs: []kms.KEK{k}}
	for i, wantWraps := range []int64{2, 3} {
		ct, err := e.Seal(ctx, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if got := k.wraps.Load(); got != wantWraps {
			t.Fatalf("file %d: %d wraps in all, want %d", i, got, wantWraps)
		}
		if _, err := Open(ctx, ct, KEKs{k}); err != nil {
			t.Fatal(err)
		}
	}
}

// bigSlotKEK records a long key version, so that its slot outgrows the
// first estimate.
type bigSlotKEK struct{ countingKEK }

func (k *bigSlotKEK) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	w, err := k.countingKEK.Wrap(ctx, dek, aad)
	w.Ciphertext = append(w.Ciphertext, make([]byte, 400)...)
	return w, err
}

func (k *bigSlotKEK) Unwrap(ctx context.Context, wrapped, aad []byte) (kms.UnwrapResult, error) {
	if len(wrapped) < 400 {
		return kms.UnwrapResult{}, kms.ErrWrongKey
	}
	return k.countingKEK.Unwrap(ctx, wrapped[:len(wrapped)-400], aad)
}

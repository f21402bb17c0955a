package envelope

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"

	"github.com/kpcrypt/kpcrypt/envelope/internal/format"
	"github.com/kpcrypt/kpcrypt/internal/sha256pair"
)

// Labels of FORMAT.md §2.2 and §3.2.
const (
	labelHeaderMAC     = "kpcrypt envelope v1 header mac"
	labelSlotAAD       = "kpcrypt envelope v1 slot"
	labelSharedSlotAAD = "kpcrypt envelope v1 shared slot"
)

// headerMAC computes the core's MAC: HMAC-SHA-256 under a key derived from
// the DEK and the stream salt, over the core without its MAC.
func headerMAC(dek []byte, core *format.Core) ([format.MACSize]byte, error) {
	var mac [format.MACSize]byte
	b, err := core.AppendWithoutMAC(nil)
	if err != nil {
		return mac, err
	}
	// The HMACs run one after another: two SHA-256 digests, reset before
	// each use, serve them all.
	var ds sha256pair.Pair
	key, err := hkdf.Key(ds.Next, dek, core.Stream.Salt[:], labelHeaderMAC, 32)
	if err != nil {
		return mac, err
	}
	defer clear(key)
	h := hmac.New(ds.Next, key)
	h.Write(b)
	copy(mac[:], h.Sum(nil))
	return mac, nil
}

// slotAAD is the associated data given to a KEK for a slot of recipe 1: a
// label, the SHA-256 of the whole core, and the KEK URI. It binds the
// wrapped DEK to this file and this KEK.
func slotAAD(coreBytes []byte, uri string) []byte {
	return aadOf(labelSlotAAD, coreBytes, uri)
}

// sharedSlotAAD is the associated data of a slot of recipe 2, for a DEK
// shared by several files: a label, the SHA-256 of the encoded encryption
// context, and the KEK URI. Each file's core is still bound to the DEK by
// its MAC.
func sharedSlotAAD(encodedContext []byte, uri string) []byte {
	return aadOf(labelSharedSlotAAD, encodedContext, uri)
}

func aadOf(label string, bound []byte, uri string) []byte {
	sum := sha256.Sum256(bound)
	aad := make([]byte, 0, len(label)+len(sum)+2+len(uri))
	aad = append(aad, label...)
	aad = append(aad, sum[:]...)
	aad = binary.BigEndian.AppendUint16(aad, uint16(len(uri)))
	return append(aad, uri...)
}

// aadForSlot returns the associated data of slot s of the file whose header
// is h, by the slot's recipe.
func aadForSlot(h *format.Header, s *format.Slot) ([]byte, error) {
	if s.AADRecipe == format.AADRecipeShared {
		ctx, err := format.EncodeContext(h.Core.Context)
		if err != nil {
			return nil, err
		}
		return sharedSlotAAD(ctx, s.URI), nil
	}
	return slotAAD(h.CoreBytes, s.URI), nil
}

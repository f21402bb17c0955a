package keyprotect

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
)

type actionBody struct {
	Plaintext  string   `json:"plaintext,omitempty"`
	Ciphertext string   `json:"ciphertext,omitempty"`
	AAD        []string `json:"aad,omitempty"`
}

type actionResult struct {
	Plaintext           string      `json:"plaintext"`
	Ciphertext          string      `json:"ciphertext"`
	KeyVersion          *KeyVersion `json:"keyVersion"`
	RewrappedKeyVersion *KeyVersion `json:"rewrappedKeyVersion"`
}

func (c *Client) action(ctx context.Context, id, action string, body any, out any) error {
	_, err := c.do(ctx, call{op: action, method: http.MethodPost, path: "keys/" + url.PathEscape(id) + "/actions/" + action, body: body}, out)
	return err
}

// actionOnce is action for an action that must not be repeated after it
// may have been served.
func (c *Client) actionOnce(ctx context.Context, id, action string, body any, out any) error {
	_, err := c.do(ctx, call{once: true, op: action, method: http.MethodPost, path: "keys/" + url.PathEscape(id) + "/actions/" + action, body: body}, out)
	return err
}

// Wrapped is a wrapped DEK as Key Protect returns it.
type Wrapped struct {
	// Ciphertext is Key Protect's base64 ciphertext, kept as it came.
	Ciphertext string
	// KeyVersion is the version of the root key that wrapped it.
	KeyVersion string
}

// Wrap wraps dek with the root key id, bound to aad (which must be given
// again, in the same order, to unwrap).
func (c *Client) Wrap(ctx context.Context, id string, dek []byte, aad []string) (Wrapped, error) {
	if len(dek) == 0 {
		// Key Protect would make up a DEK of its own and wrap that: a caller
		// who passed an empty slice by mistake would lose it.
		return Wrapped{}, fmt.Errorf("keyprotect wrap: %w: the data key to wrap is empty", ErrBadRequest)
	}
	var r actionResult
	body := actionBody{Plaintext: base64.StdEncoding.EncodeToString(dek), AAD: aad}
	if err := c.action(ctx, id, "wrap", body, &r); err != nil {
		return Wrapped{}, err
	}
	if r.Ciphertext == "" || r.KeyVersion == nil {
		return Wrapped{}, fmt.Errorf("keyprotect wrap: response lacks the ciphertext or key version")
	}
	return Wrapped{Ciphertext: r.Ciphertext, KeyVersion: r.KeyVersion.ID}, nil
}

// Unwrapped is the result of [Client.Unwrap].
type Unwrapped struct {
	// Plaintext is the DEK.
	Plaintext []byte
	// KeyVersion is the version that had wrapped the ciphertext.
	KeyVersion string
	// Rewrapped, when the key was rotated since the wrap, is the DEK wrapped
	// again under the newest version.
	Rewrapped *Wrapped
}

// Unwrap unwraps a ciphertext that Wrap returned. After a rotation the
// service also returns the DEK wrapped under the newest version.
func (c *Client) Unwrap(ctx context.Context, id, ciphertext string, aad []string) (Unwrapped, error) {
	var r actionResult
	if err := c.action(ctx, id, "unwrap", actionBody{Ciphertext: ciphertext, AAD: aad}, &r); err != nil {
		return Unwrapped{}, err
	}
	pt, err := base64.StdEncoding.DecodeString(r.Plaintext)
	if err != nil || len(pt) == 0 {
		return Unwrapped{}, fmt.Errorf("keyprotect unwrap: response has no valid plaintext")
	}
	u := Unwrapped{Plaintext: pt}
	if r.KeyVersion != nil {
		u.KeyVersion = r.KeyVersion.ID
	}
	if r.Ciphertext != "" && r.RewrappedKeyVersion != nil {
		u.Rewrapped = &Wrapped{Ciphertext: r.Ciphertext, KeyVersion: r.RewrappedKeyVersion.ID}
	}
	return u, nil
}

// Rewrap wraps a ciphertext again under the newest version of the key,
// inside the service: the DEK is never returned. It returns the new
// ciphertext and the version that had wrapped the old one.
func (c *Client) Rewrap(ctx context.Context, id, ciphertext string, aad []string) (Wrapped, string, error) {
	var r actionResult
	if err := c.action(ctx, id, "rewrap", actionBody{Ciphertext: ciphertext, AAD: aad}, &r); err != nil {
		return Wrapped{}, "", err
	}
	if r.Ciphertext == "" || r.RewrappedKeyVersion == nil {
		return Wrapped{}, "", fmt.Errorf("keyprotect rewrap: response lacks the ciphertext or version")
	}
	old := ""
	if r.KeyVersion != nil {
		old = r.KeyVersion.ID
	}
	return Wrapped{Ciphertext: r.Ciphertext, KeyVersion: r.RewrappedKeyVersion.ID}, old, nil
}

// Rotate makes a new version of a root key current. Key Protect allows one
// rotation per key per hour.
//
// A rotation is never repeated blindly: when an attempt fails after its
// request may have been served (a lost answer, a 5xx), Rotate compares the
// key's current version with the one before, and reports success if the
// key did rotate, or tries again if it did not. So a lost answer neither
// rotates a key twice nor turns into a false 409.
func (c *Client) Rotate(ctx context.Context, id string) error {
	return c.rotate(ctx, id, struct{}{})
}

func (c *Client) rotate(ctx context.Context, id string, body any) error {
	before, err := c.currentVersion(ctx, id)
	if err != nil {
		return err
	}
	for range c.attempts {
		err = c.actionOnce(ctx, id, "rotate", body, nil)
		if !errors.Is(err, ErrOutcomeUnknown) {
			return err
		}
		now, verr := c.currentVersion(ctx, id)
		if verr != nil {
			return err
		}
		if now != before {
			return nil // the lost answer was a success
		}
	}
	return err
}

// currentVersion returns the ID of a key's current version.
func (c *Client) currentVersion(ctx context.Context, id string) (string, error) {
	k, err := c.GetKey(ctx, id)
	if err != nil {
		return "", err
	}
	if k.KeyVersion == nil {
		return "", fmt.Errorf("keyprotect get key: the key has no version")
	}
	return k.KeyVersion.ID, nil
}

// Disable suspends a root key: it stops wrapping and unwrapping.
func (c *Client) Disable(ctx context.Context, id string) error {
	return c.action(ctx, id, "disable", nil, nil)
}

// Enable reactivates a suspended root key.
func (c *Client) Enable(ctx context.Context, id string) error {
	return c.action(ctx, id, "enable", nil, nil)
}

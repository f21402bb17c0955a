package keyprotect

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Key states.
const (
	StatePreActivation = 0
	StateActive        = 1
	StateSuspended     = 2
	StateDeactivated   = 3
	StateDestroyed     = 5
)

const (
	keyType        = "application/vnd.ibm.kms.key+json"
	policyType     = "application/vnd.ibm.kms.policy+json"
	collectionKeys = keyType
)

// KeyVersion is a version of a root key.
type KeyVersion struct {
	ID           string     `json:"id"`
	CreationDate *time.Time `json:"creationDate,omitempty"`
}

// Key is a key resource.
type Key struct {
	ID             string      `json:"id,omitempty"`
	Name           string      `json:"name,omitempty"`
	Description    string      `json:"description,omitempty"`
	Type           string      `json:"type,omitempty"`
	Aliases        []string    `json:"aliases,omitempty"`
	Tags           []string    `json:"tags,omitempty"`
	State          int         `json:"state"`
	Extractable    bool        `json:"extractable"`
	Imported       bool        `json:"imported,omitempty"`
	CRN            string      `json:"crn,omitempty"`
	KeyRingID      string      `json:"keyRingID,omitempty"`
	CreationDate   *time.Time  `json:"creationDate,omitempty"`
	LastRotateDate *time.Time  `json:"lastRotateDate,omitempty"`
	KeyVersion     *KeyVersion `json:"keyVersion,omitempty"`
	Deleted        bool        `json:"deleted,omitempty"`
	// Payload is the key material of a standard key, as GetKey returns it.
	// Root keys never reveal theirs.
	Payload string `json:"payload,omitempty"`
}

// IsRoot reports whether the key is a root key: one that wraps and never
// leaves the service.
func (k *Key) IsRoot() bool { return !k.Extractable }

type collection[T any] struct {
	Metadata struct {
		CollectionType  string `json:"collectionType"`
		CollectionTotal int    `json:"collectionTotal"`
		TotalCount      *int   `json:"totalCount,omitempty"`
	} `json:"metadata"`
	Resources []T `json:"resources"`
}

func newCollection[T any](typ string, items ...T) collection[T] {
	var c collection[T]
	c.Metadata.CollectionType = typ
	c.Metadata.CollectionTotal = len(items)
	c.Resources = items
	return c
}

// CreateKeyRequest describes a key to create.
type CreateKeyRequest struct {
	// Name is the key's display name, 2 to 90 characters.
	Name string
	// Description is optional, 2 to 240 characters.
	Description string
	// Root makes a root key (wrap, unwrap, rotate; never extractable);
	// otherwise a standard key is made.
	Root bool
	// Payload, when set, is key material to import: 16, 24 or 32 bytes for a
	// root key.
	Payload []byte
	// Aliases are optional alternative names.
	Aliases []string
}

// CreateKey creates a key and returns it.
//
// A creation is not repeated after its request may have been served (a
// lost answer, a 5xx), since names are not unique and a second key would
// be made. With an alias, the one name that is unique in an instance, a
// lost answer is reconciled: the key holding the first alias, if it has the
// requested name, is the one created. Otherwise the error matches
// [ErrOutcomeUnknown]: list the keys to see whether it was made.
func (c *Client) CreateKey(ctx context.Context, r CreateKeyRequest) (*Key, error) {
	k := Key{Type: keyType, Name: r.Name, Description: r.Description, Extractable: !r.Root, Aliases: r.Aliases}
	if r.Payload != nil {
		k.Payload = base64.StdEncoding.EncodeToString(r.Payload)
	}
	return c.createKey(ctx, "keys", k)
}

func (c *Client) createKey(ctx context.Context, path string, k Key) (*Key, error) {
	var out collection[Key]
	_, err := c.do(ctx, call{once: true, op: "create key", method: http.MethodPost, path: path, body: newCollection(collectionKeys, k)}, &out)
	if errors.Is(err, ErrOutcomeUnknown) && len(k.Aliases) > 0 {
		if got, gerr := c.GetKey(ctx, k.Aliases[0]); gerr == nil && got.Name == k.Name {
			return got, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return first(out, "create key")
}

func first[T any](c collection[T], op string) (*T, error) {
	if len(c.Resources) == 0 {
		return nil, fmt.Errorf("keyprotect %s: response has no resource", op)
	}
	return &c.Resources[0], nil
}

// ListOptions filters and pages a key listing.
type ListOptions struct {
	// Limit is the page size, 1 to 5000; zero means the service's default.
	Limit int
	// Offset skips that many keys.
	Offset int
	// States lists the states to include; empty means the service's
	// default (every state but destroyed).
	States []int
	// Extractable, if set, lists standard keys (true) or root keys (false).
	Extractable *bool
}

func (o *ListOptions) query() url.Values {
	q := url.Values{}
	if o == nil {
		return q
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Offset > 0 {
		q.Set("offset", strconv.Itoa(o.Offset))
	}
	if len(o.States) > 0 {
		s := make([]string, len(o.States))
		for i, st := range o.States {
			s[i] = strconv.Itoa(st)
		}
		q.Set("state", strings.Join(s, ","))
	}
	if o.Extractable != nil {
		q.Set("extractable", strconv.FormatBool(*o.Extractable))
	}
	return q
}

// ListKeys returns one page of keys.
func (c *Client) ListKeys(ctx context.Context, opts *ListOptions) ([]Key, error) {
	var out collection[Key]
	if _, err := c.do(ctx, call{op: "list keys", method: http.MethodGet, path: "keys", query: opts.query()}, &out); err != nil {
		return nil, err
	}
	return out.Resources, nil
}

// AllKeys pages through every key that opts selects, pageSize keys at a
// time (200 if zero). It stops at the first error, which it yields.
func (c *Client) AllKeys(ctx context.Context, opts ListOptions, pageSize int) iter.Seq2[Key, error] {
	if pageSize <= 0 {
		pageSize = 200
	}
	return func(yield func(Key, error) bool) {
		o := opts
		o.Limit = pageSize
		for {
			page, err := c.ListKeys(ctx, &o)
			if err != nil {
				yield(Key{}, err)
				return
			}
			for _, k := range page {
				if !yield(k, nil) {
					return
				}
			}
			if len(page) < pageSize {
				return
			}
			o.Offset += len(page)
		}
	}
}

// CountKeys returns the number of keys opts selects (its limit and offset
// are ignored), from the Key-Total header of a HEAD request.
func (c *Client) CountKeys(ctx context.Context, opts *ListOptions) (int, error) {
	q := opts.query()
	q.Del("limit")
	q.Del("offset")
	h, err := c.do(ctx, call{op: "count keys", method: http.MethodHead, path: "keys", query: q}, nil)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(h.Get("Key-Total"))
	if err != nil {
		return 0, fmt.Errorf("keyprotect count keys: bad Key-Total header %q", h.Get("Key-Total"))
	}
	return n, nil
}

// GetKey returns a key by ID or alias.
func (c *Client) GetKey(ctx context.Context, id string) (*Key, error) {
	var out collection[Key]
	if _, err := c.do(ctx, call{op: "get key", method: http.MethodGet, path: "keys/" + url.PathEscape(id)}, &out); err != nil {
		return nil, err
	}
	return first(out, "get key")
}

// KeyVersions returns the versions of a key, newest first.
func (c *Client) KeyVersions(ctx context.Context, id string) ([]KeyVersion, error) {
	var out collection[KeyVersion]
	q := url.Values{"limit": {"5000"}}
	if _, err := c.do(ctx, call{op: "list key versions", method: http.MethodGet, path: "keys/" + url.PathEscape(id) + "/versions", query: q}, &out); err != nil {
		return nil, err
	}
	return out.Resources, nil
}

// DeleteKey deletes a key. force deletes it even when it protects
// registered resources.
func (c *Client) DeleteKey(ctx context.Context, id string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	_, err := c.do(ctx, call{op: "delete key", method: http.MethodDelete, path: "keys/" + url.PathEscape(id), query: q, prefer: "return=minimal"}, nil)
	return err
}

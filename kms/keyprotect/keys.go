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

// KeyVersions returns every version of a key, newest first, whatever the
// key's state: the list is asked for with allKeyStates (without it a
// suspended or expired key's versions are refused with a 409, though it
// still unwraps), and paged through until the total the service reports.
func (c *Client) KeyVersions(ctx context.Context, id string) ([]KeyVersion, error) {
	const page = 1000
	var all []KeyVersion
	for {
		var out collection[KeyVersion]
		q := url.Values{"limit": {strconv.Itoa(page)}, "offset": {strconv.Itoa(len(all))}, "allKeyStates": {"true"}, "totalCount": {"true"}}
		if _, err := c.do(ctx, call{op: "list key versions", method: http.MethodGet, path: "keys/" + url.PathEscape(id) + "/versions", query: q}, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Resources...)
		total := -1
		if out.Metadata.TotalCount != nil {
			total = *out.Metadata.TotalCount
		}
		if len(out.Resources) == 0 || len(out.Resources) < page && total < 0 || total >= 0 && len(all) >= total {
			return all, nil
		}
		if len(all) > 1_000_000 {
			return nil, fmt.Errorf("keyprotect list key versions: more than a million versions")
		}
	}
}

// GetKeyMetadata returns a key's metadata, never its payload.
func (c *Client) GetKeyMetadata(ctx context.Context, id string) (*Key, error) {
	var out collection[Key]
	if _, err := c.do(ctx, call{op: "get key metadata", method: http.MethodGet, path: "keys/" + url.PathEscape(id) + "/metadata"}, &out); err != nil {
		return nil, err
	}
	return first(out, "get key metadata")
}

// RestoreKey restores a deleted root key (within 30 days of its deletion,
// and not in the first 30 seconds after it).
func (c *Client) RestoreKey(ctx context.Context, id string) (*Key, error) {
	var out collection[Key]
	if _, err := c.do(ctx, call{op: "restore key", method: http.MethodPost, path: "keys/" + url.PathEscape(id) + "/restore"}, &out); err != nil {
		return nil, err
	}
	return first(out, "restore key")
}

// PurgeKey purges a deleted key's material for good (at least 4 hours after
// its deletion).
func (c *Client) PurgeKey(ctx context.Context, id string) error {
	_, err := c.do(ctx, call{op: "purge key", method: http.MethodDelete, path: "keys/" + url.PathEscape(id) + "/purge", prefer: "return=minimal"}, nil)
	return err
}

// SetKeyForDeletion authorises the deletion of a key under a dual-auth
// delete policy: a second user may then delete it within 7 days.
func (c *Client) SetKeyForDeletion(ctx context.Context, id string) error {
	return c.action(ctx, id, "setKeyForDeletion", nil, nil)
}

// UnsetKeyForDeletion withdraws an authorisation to delete.
func (c *Client) UnsetKeyForDeletion(ctx context.Context, id string) error {
	return c.action(ctx, id, "unsetKeyForDeletion", nil, nil)
}

// CreateAlias adds an alias to a key.
func (c *Client) CreateAlias(ctx context.Context, id, alias string) error {
	_, err := c.do(ctx, call{op: "create alias", method: http.MethodPost, path: "keys/" + url.PathEscape(id) + "/aliases/" + url.PathEscape(alias)}, nil)
	return err
}

// DeleteAlias removes an alias from a key.
func (c *Client) DeleteAlias(ctx context.Context, id, alias string) error {
	_, err := c.do(ctx, call{op: "delete alias", method: http.MethodDelete, path: "keys/" + url.PathEscape(id) + "/aliases/" + url.PathEscape(alias)}, nil)
	return err
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

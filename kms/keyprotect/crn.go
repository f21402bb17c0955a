package keyprotect

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/kpcrypt/kpcrypt/kms"
)

// Scheme is the URI scheme of Key Protect and HPCS KEKs: their URIs are key
// CRNs.
const Scheme = "crn"

// CRN is a parsed key CRN:
// crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:key:KEYID, with
// "hs-crypto" in place of "kms" for HPCS.
type CRN struct {
	Service    Service
	Region     string
	Account    string
	InstanceID string
	KeyID      string
	raw        string
}

var (
	// A region is a lowercase name such as us-south or eu-de: never a
	// host, a port, a path or anything a URL parser would read as one.
	regionRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$`)
	// Service instance GUIDs and key IDs are lowercase UUIDs.
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	// Key Protect key aliases: 2 to 90 letters, digits, - and _.
	aliasRE = regexp.MustCompile(`^[A-Za-z0-9_-]{2,90}$`)
	// An account is letters and digits.
	accountRE = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)
)

// ParseCRN parses a key CRN strictly: the service is kms or hs-crypto, the
// region a lowercase DNS label, the instance a UUID, the key ID a UUID or a
// Key Protect alias, the account letters and digits. A CRN read from a file
// is hostile until proved otherwise, and these rules leave it no way to name
// a host, a port or a path. The error never repeats the input.
func ParseCRN(s string) (CRN, error) {
	bad := func(why string) (CRN, error) {
		return CRN{}, fmt.Errorf("%w: not a Key Protect key CRN: %s", kms.ErrInvalidURI, why)
	}
	if len(s) > 512 {
		return bad("longer than 512 bytes")
	}
	f := strings.Split(s, ":")
	if len(f) != 10 || f[0] != "crn" || f[1] != "v1" {
		return bad("want crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:key:KEYID")
	}
	if f[2] != "bluemix" || (f[3] != "public" && f[3] != "private") {
		return bad("the CRN is not of IBM Cloud's public or private cloud (want crn:v1:bluemix:public:…)")
	}
	svc := Service(f[4])
	if svc != KeyProtect && svc != HPCS {
		return bad("the service is neither kms nor hs-crypto")
	}
	if !regionRE.MatchString(f[5]) {
		return bad("the region is not a lowercase name such as us-south")
	}
	acct, ok := strings.CutPrefix(f[6], "a/")
	if !ok || !accountRE.MatchString(acct) {
		return bad("the account is not a/ followed by letters and digits")
	}
	if !uuidRE.MatchString(f[7]) {
		return bad("the instance is not a lowercase UUID")
	}
	if f[8] != "key" {
		return bad("the resource type is not key")
	}
	if !uuidRE.MatchString(f[9]) && !aliasRE.MatchString(f[9]) {
		return bad("the key ID is neither a lowercase UUID nor a key alias")
	}
	return CRN{Service: svc, Region: f[5], Account: acct, InstanceID: f[7], KeyID: f[9], raw: s}, nil
}

// ParseInstanceCRN parses the CRN of a Key Protect or HPCS service
// instance, crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:: (what the
// IBM Cloud console shows), under the rules of [ParseCRN]. A key CRN is
// accepted too, and stands for its instance. The result has no KeyID.
func ParseInstanceCRN(s string) (CRN, error) {
	if f := strings.Split(s, ":"); len(f) == 10 && f[8] == "" && f[9] == "" {
		c, err := ParseCRN(strings.Join(f[:8], ":") + ":key:" + "0000000000000000")
		if err != nil {
			return CRN{}, err
		}
		c.KeyID, c.raw = "", s
		return c, nil
	}
	c, err := ParseCRN(s)
	if err != nil {
		return CRN{}, err
	}
	c.KeyID = ""
	c.raw = strings.Join(strings.Split(s, ":")[:8], ":") + "::"
	return c, nil
}

// ValidRegion reports whether s may be a region of a CRN, as [ParseCRN]
// reads it: a lowercase DNS label such as us-south.
func ValidRegion(s string) bool { return regionRE.MatchString(s) }

// ValidInstanceID reports whether s may be a service instance's GUID: a
// lowercase UUID.
func ValidInstanceID(s string) bool { return uuidRE.MatchString(s) }

// ValidKeyID reports whether s may be a key's ID in a CRN: a lowercase UUID
// or a Key Protect alias.
func ValidKeyID(s string) bool { return uuidRE.MatchString(s) || aliasRE.MatchString(s) }

// String returns the CRN as it was parsed.
func (c CRN) String() string { return c.raw }

package kplocal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Account is one more API key the IAM token endpoint accepts, with the
// instances its tokens may use. A token grants access to exactly the
// instances of the API key it was issued for; any other bluemix-instance is
// answered 401 with Key Protect's "The user does not have access to the
// specified resource" body.
//
// Several accounts may list the same instance (two users of one instance,
// as dual-authorisation delete needs); each API key is a distinct caller.
type Account struct {
	// APIKey is the API key. It must be non-empty and unique.
	APIKey string `json:"apiKey"`

	// AccountID is the account ID written into the CRNs of the instances
	// this account lists first. Empty means Config.Account.
	AccountID string `json:"accountID,omitempty"`

	// Instances are the instance GUIDs this API key's tokens may use. At
	// least one.
	Instances []string `json:"instances"`
}

// ErrBadAccounts is wrapped by [New]'s error when Config.Accounts is
// inconsistent (an empty or repeated API key, an account without
// instances, an instance listed with two different account IDs).
var ErrBadAccounts = errors.New("kplocal: bad accounts")

// principal is a caller: an API key, its IAM identity and its instances.
type principal struct {
	apiKey    string
	iamID     string // sub of its tokens; createdBy, deletedBy and the dual-auth caller
	instances []string
}

// setupAccounts builds the callers and instances of cfg: the primary
// (APIKey, InstanceID, Account) first, then cfg.Accounts in order.
func setupAccounts(cfg Config) ([]principal, map[string]*instance, error) {
	all := append([]Account{{APIKey: cfg.APIKey, AccountID: cfg.Account, Instances: []string{cfg.InstanceID}}}, cfg.Accounts...)
	var principals []principal
	instances := make(map[string]*instance)
	for i, a := range all {
		if a.APIKey == "" {
			return nil, nil, fmt.Errorf("%w: account %d has no API key", ErrBadAccounts, i)
		}
		if slices.ContainsFunc(principals, func(p principal) bool { return p.apiKey == a.APIKey }) {
			return nil, nil, fmt.Errorf("%w: account %d repeats an API key", ErrBadAccounts, i)
		}
		if len(a.Instances) == 0 {
			return nil, nil, fmt.Errorf("%w: account %d lists no instance", ErrBadAccounts, i)
		}
		acct := a.AccountID
		if acct == "" {
			acct = cfg.Account
		}
		if err := checkCRNSegment("account", acct); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBadAccounts, err)
		}
		for _, id := range a.Instances {
			if err := checkCRNSegment("instance ID", id); err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrBadAccounts, err)
			}
			switch inst := instances[id]; {
			case inst == nil:
				instances[id] = newInstance(id, acct, cfg.Now())
			case a.AccountID != "" && inst.account != a.AccountID:
				return nil, nil, fmt.Errorf("%w: instance %s is listed with accounts %s and %s", ErrBadAccounts, id, inst.account, a.AccountID)
			}
		}
		iamID := createdByID
		if i > 0 {
			iamID = fmt.Sprintf("%s-%d", createdByID, i)
		}
		principals = append(principals, principal{apiKey: a.APIKey, iamID: iamID, instances: slices.Clone(a.Instances)})
	}
	return principals, instances, nil
}

// AccountsFile is the JSON format of an accounts file (the kplocal
// command's KPLOCAL_API_KEYS_FILE):
//
//	{"accounts": [
//	  {"apiKey": "second-key", "instances": ["<instance GUID>"]},
//	  {"apiKey": "other-key", "accountID": "otheraccount", "instances": ["<GUID>", "<GUID>"]}
//	]}
//
// Each entry is an [Account]. Unknown fields are refused.
type AccountsFile struct {
	Accounts []Account `json:"accounts"`
}

// ParseAccounts decodes an accounts file ([AccountsFile]). Its error never
// quotes the data, which holds API keys.
func ParseAccounts(data []byte) ([]Account, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f AccountsFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrBadAccounts, describeJSONError(err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: unexpected data after the JSON value", ErrBadAccounts)
	}
	return f.Accounts, nil
}

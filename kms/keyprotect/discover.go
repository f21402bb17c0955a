package keyprotect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/kpcrypt/kpcrypt/kms"
)

// BrokerURL returns the base URL of the HPCS broker of a region, which
// answers "Retrieve the API endpoint URL" for its instances:
// https://REGION.broker.hs-crypto.cloud.ibm.com.
func BrokerURL(region string) (string, error) {
	if !regionRE.MatchString(region) {
		return "", errors.New("keyprotect: the region is not a lowercase name such as us-south")
	}
	return (&url.URL{Scheme: "https", Host: region + ".broker.hs-crypto.cloud.ibm.com"}).String(), nil
}

// hpcsInstance is the broker's answer for an instance.
type hpcsInstance struct {
	InstanceID string `json:"instance_id"`
	KMS        struct {
		Public  string `json:"public"`
		Private string `json:"private"`
	} `json:"kms"`
}

// DiscoverEndpoint asks the HPCS broker at brokerURL (see [BrokerURL]) for
// the key-management endpoint of an instance, as the HPCS set-up page
// advises, and returns it as an https base URL: the instance's kms.public
// value, or kms.private when private is set, given as host:port with no
// scheme. The request carries an IAM token from tokens.
//
// The value comes from a server, so it is checked before any token goes to
// it: its host must be under IBM's published suffixes ([IsIBMHost]), or be
// the broker's own host (a broker the user configured, such as kplocal).
// No redirect is followed.
func DiscoverEndpoint(ctx context.Context, hc *http.Client, brokerURL, instanceID string, tokens TokenSource, private bool) (string, error) {
	fail := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("keyprotect: HPCS endpoint discovery: "+format, args...)
	}
	if !uuidRE.MatchString(instanceID) {
		return fail("the instance ID is not a lowercase UUID")
	}
	broker, err := checkBaseURL(brokerURL)
	if err != nil {
		return "", err
	}
	token, err := tokens.Token(ctx)
	if err != nil {
		return "", err
	}
	u := *broker
	u.Path = "/crypto_v2/instances/" + instanceID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := noRedirects(hc).Do(req)
	if err != nil {
		return "", fmt.Errorf("keyprotect: HPCS endpoint discovery: %w: %w", kms.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", parseError("HPCS endpoint discovery", resp.StatusCode, body, "")
	}
	var in hpcsInstance
	if err := json.Unmarshal(body, &in); err != nil {
		return fail("the broker's answer is not the instance JSON")
	}
	v := in.KMS.Public
	if private {
		v = in.KMS.Private
	}
	if v == "" {
		return fail("the broker gave no key-management endpoint for the instance")
	}
	if strings.Contains(v, "://") && !strings.HasPrefix(v, "https://") {
		return fail("the broker's endpoint is not https")
	}
	ep, err := checkBaseURL(v)
	if err != nil || ep.Scheme != "https" {
		return fail("the broker's endpoint is not an https host:port")
	}
	if host := ep.Hostname(); !IsIBMHost(host) && !sameHost(host, broker.Hostname()) {
		return fail("the broker's endpoint is neither under an IBM Cloud domain nor the broker's own host; refusing to send it a token")
	}
	return ep.String(), nil
}

func sameHost(a, b string) bool {
	if a == b {
		return true
	}
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	return ia != nil && ib != nil && ia.Equal(ib)
}

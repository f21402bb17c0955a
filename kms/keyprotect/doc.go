// Package keyprotect is a client for the IBM Key Protect API, which Hyper
// Protect Crypto Services (HPCS) serves too, and a KEK backed by a Key
// Protect root key.
//
// The [Client] exchanges an API key for IAM tokens (cached, refreshed before
// they expire, one refresh at a time), sends bluemix-instance and a fresh
// correlation-id with every call, retries 429, 5xx (but 501) and network
// errors with exponential backoff and jitter while honouring Retry-After,
// and bounds every attempt with a timeout and every call with its context.
// Error responses become [*Error] values carrying the status, the reason
// codes and the correlation id; errors.Is maps them to the classes of this
// package and of package kms.
//
// [KEK] wraps DEKs with a root key named by its CRN, the KEK URI recorded in
// kpcrypt file headers:
//
//	crn:v1:bluemix:public:kms:us-south:a/ACCOUNT:INSTANCE:key:KEYID
//	crn:v1:bluemix:public:hs-crypto:us-south:a/ACCOUNT:INSTANCE:key:KEYID
//
// [Opener] opens such KEKs from their CRNs, for a kms.Resolver; the region
// and instance come from the CRN and the endpoint from them, unless
// Config.BaseURL or Opener.Route overrides it (HPCS port-based endpoints,
// private networks, or the local server kplocal). A CRN may come from a
// file, so [ParseCRN] is strict (a lowercase region, UUIDs, a key alias), the
// endpoint is built with net/url under IBM's published suffixes
// ([IsIBMHost]), clients are cached per endpoint and instance, and no
// redirect is ever followed, for IAM or Key Protect. [ConfigFromEnv] reads IBMCLOUD_API_KEY,
// IBMCLOUD_KP_ENDPOINT and IBMCLOUD_IAM_ENDPOINT. Credentials are never
// logged and never appear in errors.
package keyprotect

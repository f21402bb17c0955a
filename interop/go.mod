module github.com/kpcrypt/kpcrypt/interop

go 1.26.4

replace github.com/kpcrypt/kpcrypt => ../

require (
	github.com/IBM/keyprotect-go-client v0.17.3
	github.com/kpcrypt/kpcrypt v0.0.0-00010101000000-000000000000
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/hashicorp/go-cleanhttp v0.5.2 // indirect
	github.com/hashicorp/go-retryablehttp v0.7.8 // indirect
)

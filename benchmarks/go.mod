module github.com/kpcrypt/kpcrypt/benchmarks

go 1.26.0

replace github.com/kpcrypt/kpcrypt => ../

require (
	filippo.io/age v1.3.2
	github.com/kpcrypt/kpcrypt v0.0.0-00010101000000-000000000000
	github.com/minio/sio v0.4.1
	github.com/tink-crypto/tink-go/v2 v2.9.0
)

require (
	filippo.io/hpke v0.4.0 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)

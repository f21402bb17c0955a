package trust

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kpcrypt/kpcrypt/internal/securefile"
)

// DefaultFile returns the path of the default trust configuration:
// trust.json in kpcrypt's directory under XDG_CONFIG_HOME, or under the
// user's configuration directory ([os.UserConfigDir]) when that is unset.
func DefaultFile(getenv func(string) string) (string, error) {
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		var err error
		if dir, err = os.UserConfigDir(); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, "kpcrypt", "trust.json"), nil
}

// Load reads the trust configuration that KPCRYPT_TRUST_FILE names, or the
// default file ([DefaultFile]) when the variable is unset. A missing default
// file means no configuration: Load returns nil, "" and no error. A file
// that KPCRYPT_TRUST_FILE names must exist. It returns the path it read.
func Load(getenv func(string) string) (*Config, string, error) {
	path := getenv(EnvFile)
	named := path != ""
	if !named {
		var err error
		if path, err = DefaultFile(getenv); err != nil {
			return nil, "", nil // no home: no default configuration
		}
	}
	c, err := LoadFile(path)
	if err != nil {
		if !named && errors.Is(err, fs.ErrNotExist) {
			return nil, "", nil
		}
		return nil, path, err
	}
	return c, path, nil
}

// LoadFile reads and parses the trust configuration at path. The file gets
// the checks of a key file (see the package doc): the trust configuration
// decides which keys decrypt, so nobody but its owner may change it.
func LoadFile(path string) (*Config, error) {
	data, _, err := securefile.ReadPrivate(path, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("trust configuration %s: %w", path, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("trust configuration %s: %w", path, err)
	}
	return c, nil
}

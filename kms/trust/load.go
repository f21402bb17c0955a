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
// user's configuration directory ([os.UserConfigDir]) when that is unset
// or relative (the XDG rule: a relative path is ignored).
func DefaultFile(getenv func(string) string) (string, error) {
	dir := getenv("XDG_CONFIG_HOME")
	if !filepath.IsAbs(dir) {
		var err error
		if dir, err = os.UserConfigDir(); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, "kpcrypt", "trust.json"), nil
}

// NoFile, as the value of KPCRYPT_TRUST_FILE, says that there is no trust
// configuration, on purpose.
const NoFile = "none"

// ErrNoLocation means the default trust configuration cannot be located
// (no home directory): whether the user has one is unknown, so nothing a
// header names may be trusted until KPCRYPT_TRUST_FILE says where it is,
// or that there is none.
var ErrNoLocation = errors.New("the trust configuration cannot be located (no home directory): set KPCRYPT_TRUST_FILE to its path, or to none")

// Load reads the trust configuration that KPCRYPT_TRUST_FILE names, or the
// default file ([DefaultFile]) when the variable is unset. It returns the
// path it read.
//
// A missing default file means no configuration: Load returns nil, "" and
// no error. But it fails closed wherever a configuration may exist unseen:
// a default file that is a link leading nowhere (an unmounted secret
// volume), and a default location that cannot be determined
// ([ErrNoLocation]). A file that KPCRYPT_TRUST_FILE names must exist, and
// KPCRYPT_TRUST_FILE=none means no configuration on purpose.
func Load(getenv func(string) string) (*Config, string, error) {
	path := getenv(EnvFile)
	if path == NoFile {
		return nil, "", nil
	}
	named := path != ""
	if !named {
		var err error
		if path, err = DefaultFile(getenv); err != nil {
			return nil, "", ErrNoLocation
		}
	}
	c, err := LoadFile(path)
	if err != nil {
		if !named && errors.Is(err, fs.ErrNotExist) {
			if _, lerr := os.Lstat(path); lerr == nil {
				return nil, path, fmt.Errorf("trust configuration %s is a link that leads nowhere: %w", path, err)
			}
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
	data, resolved, err := securefile.ReadPrivate(path, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("trust configuration %s: %w", path, err)
	}
	if err := checkDir(filepath.Dir(resolved)); err != nil {
		return nil, fmt.Errorf("trust configuration %s: %w", path, err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("trust configuration %s: %w", path, err)
	}
	return c, nil
}

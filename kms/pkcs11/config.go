package pkcs11

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kpcrypt/kpcrypt/internal/securefile"
)

// Environment variables read by [ConfigFromEnv].
const (
	// EnvModule names the PKCS#11 module to load when a URI has no
	// module-path.
	EnvModule = "KPCRYPT_PKCS11_MODULE"
	// EnvPIN is the user PIN used when a URI has neither pin-source nor
	// pin-value.
	EnvPIN = "KPCRYPT_PKCS11_PIN"
)

// DefaultMaxSessions bounds the sessions a Provider opens on one token when
// Config.MaxSessions is 0.
const DefaultMaxSessions = 8

// Config configures a [Provider].
type Config struct {
	// Module is the absolute path of the PKCS#11 module used when a URI has
	// no module-path. Empty: the well-known SoftHSM2 paths are searched
	// ([FindModule]).
	Module string
	// PIN is the user PIN used when a URI has neither pin-source nor
	// pin-value. Empty: no login, unless the URI gives a PIN.
	PIN string
	// Mechanisms are the wrapping mechanisms Wrap may use, most preferred
	// first: it uses the first one the token supports. Empty means
	// [DefaultMechanisms]. Unwrap accepts any mechanism the token supports,
	// whatever this list.
	Mechanisms []Mechanism
	// MaxSessions bounds the sessions open on one token; 0 means
	// [DefaultMaxSessions].
	MaxSessions int
}

// ConfigFromEnv returns a configuration from KPCRYPT_PKCS11_MODULE and
// KPCRYPT_PKCS11_PIN. getenv is usually os.Getenv.
func ConfigFromEnv(getenv func(string) string) Config {
	return Config{Module: getenv(EnvModule), PIN: getenv(EnvPIN)}
}

// DefaultModulePaths are the paths [FindModule] tries, in order: where
// SoftHSM2's module is installed by Debian and Ubuntu, Fedora and RHEL,
// Alpine, the BSDs, Homebrew and a source build.
func DefaultModulePaths() []string {
	return []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib64/pkcs11/libsofthsm2.so",
		"/usr/lib/pkcs11/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
		"/opt/homebrew/lib/softhsm/libsofthsm2.so",
	}
}

// FindModule returns configured if it is set, else the first of
// [DefaultModulePaths] that exists. The error says what was looked for.
func FindModule(configured string) (string, error) {
	if configured != "" {
		if !filepath.IsAbs(configured) {
			return "", fmt.Errorf("PKCS#11 module %q is not an absolute path", configured)
		}
		return configured, nil
	}
	for _, p := range DefaultModulePaths() {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("no PKCS#11 module: give module-path in the URI or set %s (no SoftHSM2 module found in %s)",
		EnvModule, strings.Join(DefaultModulePaths(), ", "))
}

// resolvePIN returns the PIN the URI gives, or else the configured one.
func resolvePIN(u *URI, configured string) (string, error) {
	switch {
	case u.PINValue != "":
		return u.PINValue, nil
	case u.PINSource != "":
		return readPINFile(u.PINSource)
	}
	return configured, nil
}

// maxPINFile bounds a PIN file: a PIN is at most a few dozen bytes.
const maxPINFile = 4096

// readPINFile reads the PIN from a pin-source: a path or a file: URI. The
// PIN is the file's content up to a final newline. Like a local key file,
// the file must not be readable by group or others.
func readPINFile(src string) (string, error) {
	path := src
	if rest, ok := strings.CutPrefix(src, "file:"); ok {
		path = rest
		if h, ok := strings.CutPrefix(rest, "//"); ok {
			host, p, _ := strings.Cut(h, "/")
			if host != "" && host != "localhost" {
				return "", fmt.Errorf("pin-source %s: only local files are supported", src)
			}
			path = "/" + p
		}
	}
	if strings.HasPrefix(path, "|") {
		return "", fmt.Errorf("pin-source %s: only files are supported, not commands", src)
	}
	// The checks of a key file: resolved once, opened without following a
	// last link and without blocking on a FIFO, a regular file owned by the
	// user or root, no permissions for group or others, bounded.
	b, _, err := securefile.ReadPrivate(path, maxPINFile)
	if err != nil {
		return "", fmt.Errorf("reading the PIN from pin-source: %w", err)
	}
	pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	clear(b)
	if pin == "" {
		return "", fmt.Errorf("pin-source %s is empty", path)
	}
	return pin, nil
}
